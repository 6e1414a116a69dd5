"""Benchmark the video readers (``data.video_backend``): correctness, identity, memory, speed.

Test videos are encoded here, with PyAV and OpenCV, from the DAVIS sample's real 480p frames:
the codecs and containers users bring (H.264/MP4 with B-frames, MPEG-4 Part 2/AVI from OpenCV,
VP9/WebM, 10-bit HEVC/MP4, MJPEG/AVI), a phone clip with 90-degree rotation metadata, a
mirrored (selfie) one, a variable-frame-rate MKV and a stream cut before a keyframe. For each
reader, through :class:`vidprop.io.video.VideoFileSource`, the benchmark reports:

* **correct**: the frame count is the true one and every frame matches its source frame, turned
  as a player shows it, within codec error (mean absolute difference < ``--tolerance``);
  otherwise the reader either refuses the file with an error (fine) or is **wrong** (silent);
* **identical**: frames bit-identical to PyAV's, per file;
* **memory**: resident set size after reading ``--videos`` short videos (distinct files) in one
  process, each reader in its own fresh subprocess, beside the size after the first video;
* **speed**: frames per second for opening and reading the speed set (H.264, MPEG-4, VP9 at
  854x480), interleaved repetitions (the reader order rotates), median; process CPU time
  (all threads) beside wall time; ratio to ``--baseline`` (decord, the old default) measured
  in the same run. Opening includes the decoding probe every reader shares; its share is
  printed too.

The container's own frame count (PyAV), decord's index length and OpenCV's
``CAP_PROP_FRAME_COUNT`` are listed per file, to show why counts come from decoding. Run from
the repository root:

    python tools/bench_video.py --davis-root ../shared/davis-sample
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from vidprop.io.video import VIDEO_BACKENDS, VideoFileSource, probe_video  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis-root", type=Path, default=REPO_ROOT.parent / "shared" / "davis-sample",
                        help="DAVIS root (default: ../shared/davis-sample next to the repository)")
    parser.add_argument("--sequences", nargs="+", default=["cows", "dog", "parkour"],
                        help="sequences the speed set is made of (default: cows dog parkour)")
    parser.add_argument("--speed-frames", type=int, default=40, help="frames per speed-set video (default: 40)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved speed repetitions; the median counts (default: 3)")
    parser.add_argument("--videos", type=int, default=200, help="short videos read for the memory column (default: 200)")
    parser.add_argument("--short-frames", type=int, default=10, help="frames per short video (default: 10)")
    parser.add_argument("--tolerance", type=float, default=10.0,
                        help="mean absolute difference to the source frame that still counts as the same frame (default: 10)")
    parser.add_argument("--baseline", default="decord", help="reader the speed ratios are relative to (default: decord)")
    parser.add_argument("--memory-child", nargs=2, metavar=("BACKEND", "FOLDER"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- test videos --------------------------------------------------------------------------------


def davis_frames(root: Path, sequence: str, n: int, start: int = 0) -> list[np.ndarray]:
    files = sorted((root / "JPEGImages" / "480p" / sequence).glob("*.jpg"))[start:start + n]
    if len(files) < n:
        raise SystemExit(f"{sequence}: only {len(files)} frames from {start}, {n} needed")
    return [np.asarray(Image.open(p).convert("RGB")) for p in files]


def encode(path: Path, frames, codec: str, pix_fmt: str, options=None, rotation=None, hflip=False, pts_ms=None) -> Path:
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = dict(options or {})
        if rotation is not None:
            stream.set_display_rotation(rotation, hflip=hflip)
        if pts_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def encode_opencv(path: Path, frames) -> Path:
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


def cut_first_packet(src: Path, dst: Path) -> Path:
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream_out = out.add_stream_from_template(stream_in)
        for i, packet in enumerate(inp.demux(stream_in)):
            if packet.dts is None or i == 0:
                continue
            packet.stream = stream_out
            out.mux(packet)
    return dst


@dataclass
class TestVideo:
    name: str
    path: Path
    expected: list[np.ndarray]  # displayed source frames, one per frame a correct reader returns
    speed: bool = False


X264 = {"crf": "18", "preset": "veryfast"}


def make_videos(root: Path, sequences: list[str], n: int, folder: Path) -> list[TestVideo]:
    videos = []
    for seq in sequences:
        frames = davis_frames(root, seq, n)
        videos.append(TestVideo(f"{seq}: H.264 mp4", encode(folder / f"{seq}_h264.mp4", frames, "libx264", "yuv420p", X264), frames, True))
        videos.append(TestVideo(f"{seq}: MPEG-4 avi (OpenCV)", encode_opencv(folder / f"{seq}_mp4v.avi", frames), frames, True))
        videos.append(TestVideo(f"{seq}: VP9 webm", encode(folder / f"{seq}_vp9.webm", frames, "libvpx-vp9", "yuv420p",
                                                         {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}), frames, True))
    frames = davis_frames(root, "car-shadow", 30)
    videos.append(TestVideo("10-bit HEVC mp4", encode(folder / "hevc10.mp4", frames, "libx265", "yuv420p10le",
                                                      {"preset": "ultrafast", "crf": "18", "x265-params": "log-level=error"}), frames))
    videos.append(TestVideo("MJPEG avi", encode(folder / "mjpeg.avi", frames, "mjpeg", "yuvj420p", {"q:v": "3"}), frames))
    videos.append(TestVideo("phone, rotation 90", encode(folder / "rot90.mp4", frames, "libx264", "yuv420p", X264, rotation=90),
                            [np.rot90(f, 1) for f in frames]))
    videos.append(TestVideo("selfie, rotation 90 + mirror", encode(folder / "mirror.mp4", frames, "libx264", "yuv420p", X264, rotation=90, hflip=True),
                            [np.rot90(f, 1)[:, ::-1] for f in frames]))
    pts, t = [], 0
    for i in range(30):
        pts.append(t)
        t += (10, 40, 400)[i % 3]
    videos.append(TestVideo("variable frame rate mkv", encode(folder / "vfr.mkv", frames, "libx264", "yuv420p", X264, pts_ms=pts), frames))
    gop = encode(folder / "gop.mkv", frames[:12], "libx264", "yuv420p", {**X264, "g": "4", "bf": "0"})
    videos.append(TestVideo("stream cut before a keyframe", cut_first_packet(gop, folder / "cut.mkv"), frames[4:12]))
    return videos


# --- measurements -------------------------------------------------------------------------------


def available() -> list[str]:
    names = []
    for name, spec in VIDEO_BACKENDS.items():
        try:
            __import__(spec.module)
        except Exception:
            continue
        names.append(name)
    return names


def read_all(path: Path, backend: str) -> list[np.ndarray]:
    return [frame.image for frame in VideoFileSource(path, backend=backend)]


def judge(video: TestVideo, backend: str, tolerance: float) -> tuple[str, list[np.ndarray] | None]:
    try:
        images = read_all(video.path, backend)
    except Exception as exc:  # noqa: BLE001 - the verdict is the point
        return f"refused ({type(exc).__name__})", None
    if len(images) != len(video.expected):
        return f"WRONG: {len(images)} frames, not {len(video.expected)}", images
    for i, (got, want) in enumerate(zip(images, video.expected)):
        if got.shape != want.shape:
            return f"WRONG: frame {i} is {got.shape[1]}x{got.shape[0]}, displayed {want.shape[1]}x{want.shape[0]}", images
        error = np.abs(got.astype(np.int16) - want).mean()
        if error >= tolerance:
            return f"WRONG: frame {i} differs by {error:.1f} levels", images
    return "correct", images


def library_counts(path: Path) -> str:
    import av
    import cv2

    parts = []
    with av.open(str(path)) as container:
        parts.append(f"container {container.streams.video[0].frames or '-'}")
    try:
        import decord

        parts.append(f"decord {len(decord.VideoReader(str(path)))}")
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001
        parts.append(f"decord error {type(exc).__name__}")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    parts.append(f"OpenCV {int(cap.get(cv2.CAP_PROP_FRAME_COUNT))}")
    cap.release()
    return ", ".join(parts)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(backend: str, folder: Path) -> None:
    files = sorted(folder.glob("short_*.mp4"))
    frames = 0
    for i, path in enumerate(files):
        for frame in VideoFileSource(path, backend=backend):
            frames += 1
        if i == 0:
            first = rss_mib()
    print(json.dumps({"first": first, "last": rss_mib(), "videos": len(files), "frames": frames}))


def speed_pass(videos: list[TestVideo], backend: str) -> tuple[int, float, float, float]:
    """Frames, wall seconds, CPU seconds (all threads) and probe seconds for one pass over ``videos``."""
    from vidprop.io.video import probe as probe_module

    probe_module.clear_cache()
    frames, probe_s = 0, 0.0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for video in videos:
        p0 = time.perf_counter()
        probe_video(video.path)  # cached: the source below reuses it; timed apart to show its share
        probe_s += time.perf_counter() - p0
        for _ in VideoFileSource(video.path, backend=backend):
            frames += 1
    return frames, time.perf_counter() - t0, time.process_time() - cpu0, probe_s


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0], Path(args.memory_child[1]))
        return 0
    import logging

    logging.basicConfig(level=logging.ERROR)
    backends = available()
    baseline = args.baseline if args.baseline in backends else backends[0]
    load_start = os.getloadavg()
    print(f"vidprop video-reader benchmark; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    import av
    import cv2

    versions = [f"PyAV {av.__version__} (FFmpeg {'.'.join(map(str, av.library_versions['libavcodec']))} libavcodec)", f"OpenCV {cv2.__version__}"]
    try:
        import decord

        versions.append(f"decord {decord.__version__}")
    except ImportError:
        pass
    print("readers: " + ", ".join(versions))

    with tempfile.TemporaryDirectory(prefix="vidprop-bench-video-") as tmp:
        folder = Path(tmp)
        videos = make_videos(args.davis_root, args.sequences, args.speed_frames, folder)

        # correctness and identity, per file
        print("\n| test video | frames | library counts | " + " | ".join(backends) + " |")
        print("|---|---|---|" + "---|" * len(backends))
        verdicts: dict[str, list[str]] = {b: [] for b in backends}
        identical: dict[str, int] = {b: 0 for b in backends}
        for video in videos:
            results = {b: judge(video, b, args.tolerance) for b in backends}
            reference = results.get("pyav", (None, None))[1]
            cells = []
            for b in backends:
                verdict, images = results[b]
                verdicts[b].append(verdict)
                same = (
                    images is not None and reference is not None and len(images) == len(reference)
                    and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(images, reference))
                )
                identical[b] += same
                cells.append(verdict + (", = PyAV" if same and b != "pyav" else ""))
            print(f"| {video.name} | {len(video.expected)} | {library_counts(video.path)} | " + " | ".join(cells) + " |")

        # memory: each reader in a fresh process over the same distinct short files
        short = encode(folder / "short.mp4", davis_frames(args.davis_root, "blackswan", args.short_frames), "libx264", "yuv420p", X264)
        for i in range(args.videos):
            shutil.copyfile(short, folder / f"short_{i:04d}.mp4")
        memory = {}
        for b in backends:
            out = subprocess.run([sys.executable, __file__, "--memory-child", b, str(folder)], capture_output=True, text=True, check=True)
            memory[b] = json.loads(out.stdout.strip().splitlines()[-1])

        # speed: interleaved, reader order rotating
        speed_set = [v for v in videos if v.speed]
        for b in backends:  # warm caches and imports
            speed_pass(speed_set[:1], b)
        runs: dict[str, list[tuple[int, float, float, float]]] = {b: [] for b in backends}
        for r in range(args.repeats):
            order = backends[r % len(backends):] + backends[: r % len(backends)]
            for b in order:
                runs[b].append(speed_pass(speed_set, b))

    load_end = os.getloadavg()
    print(f"\nmemory: {args.videos} distinct {args.short_frames}-frame 854x480 H.264 files, read one after another in one process per reader")
    print(f"speed: {len(speed_set)} files x {args.speed_frames} frames at 854x480 (H.264 mp4, MPEG-4 avi, VP9 webm), "
          f"median of {args.repeats} interleaved passes; ratio = fps / {baseline} fps")
    print("\n| reader | correct | refused | wrong | identical to PyAV | RSS after 1 video | after "
          f"{args.videos} | fps (open + read) | CPU s / wall s | probe share | speed vs {baseline} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base_fps = None
    rows = {}
    for b in backends:
        frames = runs[b][0][0]
        wall = statistics.median(r[1] for r in runs[b])
        cpu = statistics.median(r[2] for r in runs[b])
        probe = statistics.median(r[3] for r in runs[b])
        rows[b] = (frames / wall, cpu, wall, probe)
    base_fps = rows[baseline][0]
    for b in backends:
        fps, cpu, wall, probe = rows[b]
        v = verdicts[b]
        mem = memory[b]
        print(f"| {b} | {sum(x == 'correct' for x in v)}/{len(v)} | {sum(x.startswith('refused') for x in v)} | "
              f"{sum(x.startswith('WRONG') for x in v)} | {identical[b]}/{len(v)} | {mem['first']:.0f} MiB | {mem['last']:.0f} MiB | "
              f"{fps:.0f} | {cpu:.2f} / {wall:.2f} | {probe / wall:.0%} | {fps / base_fps:.2f}x |")
    print(f"\nload average at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
