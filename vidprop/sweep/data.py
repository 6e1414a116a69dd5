"""What a sweep runs on and how a grid point is scored: a DAVIS split, or folders of videos and ground truth.

Both give the videos (name, frames, first-frame mask) and score a folder of predicted masks
``<pred>/<video>/<frame>.png`` exactly as the matching single-run commands do:

- :class:`DavisSweepData`: as ``vidprop davis`` (its jobs, its context caps, its scorer call);
- :class:`FolderSweepData`: as ``vidprop propagate SRC --masks GT`` followed by
  ``vidprop evaluate --gt GT --pred OUT`` (the first-frame mask of a video is the first PNG of
  its ground-truth folder, which must carry the first frame's name).

Everything is opened and checked when the object is built, before any compute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from vidprop.errors import MaskError, SourceError

__all__ = ["SweepVideo", "DavisSweepData", "FolderSweepData"]


@dataclasses.dataclass(frozen=True)
class SweepVideo:
    """One video of a sweep.

    Attributes:
        name: output sub-folder and feature-cache name.
        source: its opened :class:`~vidprop.io.frames.FrameSource`.
        mask: the first frame's mask file.
        n_last_frames: cap of the recent-frame window for this video (None = the config's).
    """

    name: str
    source: Any
    mask: Path
    n_last_frames: int | None = None

    @property
    def frames(self) -> int:
        return len(self.source)


def _inputs_digest(videos: Sequence[SweepVideo]) -> str:
    """A hash of every video's input identity (frames or video file, first-mask content), so a
    finished point is not reused after its inputs changed (see :func:`~vidprop.io.outputs.input_identity`)."""
    from vidprop.io.outputs import input_identity

    identities = [[v.name, input_identity(v.source.path, [("first frame", v.mask)])] for v in videos]
    return hashlib.sha256(json.dumps(identities, sort_keys=True).encode()).hexdigest()[:32]


def _preflight(videos: Sequence[SweepVideo]) -> None:
    from vidprop.io.masks import read_mask

    for video in videos:
        read_mask(video.mask, expected_size=video.source.size)


class DavisSweepData:
    """Sequences of a DAVIS split, scored with the official semantics (as ``vidprop davis``).

    ``inputs`` lists, as ``(description, path)``, the folders a sweep's outputs must keep clear of.

    Raises:
        DavisLayoutError: bad root, split or sequence name; MaskError: a bad first mask.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", sequences: Sequence[str] | None = None, resolution: str = "480p"):
        from vidprop.io.davis import DavisDataset
        from vidprop.pipeline import davis_jobs

        self.root = Path(root)
        self.split = split
        self.resolution = resolution
        dataset = DavisDataset(root, split=split, resolution=resolution)
        jobs = davis_jobs(dataset, Path("."), sequences)
        self.videos = [SweepVideo(job.name, job.source, job.mask, job.n_last_frames) for job in jobs]
        self.inputs = (("DAVIS root", self.root),)
        _preflight(self.videos)

    @property
    def signature(self) -> dict:
        """What the scores depend on besides the config (a finished point is reused only if it matches)."""
        return {
            "mode": "davis",
            "root": str(self.root.expanduser().resolve()),
            "split": self.split,
            "resolution": self.resolution,
            "sequences": [v.name for v in self.videos],
            "inputs": _inputs_digest(self.videos),
        }

    def describe(self) -> str:
        return f"DAVIS {self.root} split {self.split} ({len(self.videos)} sequences)"

    def score(self, pred_dir: Path, config: Any) -> Any:
        """The :class:`~vidprop.scoring.DavisScores` of ``pred_dir`` (as ``vidprop davis`` scores)."""
        from vidprop.pipeline import score_davis

        return score_davis(
            self.root, pred_dir, config, split=self.split, sequences=[v.name for v in self.videos], resolution=self.resolution
        )


class FolderSweepData:
    """Videos of a folder (sub-folders of frames or video files) with ground truth ``GT/<video>/<frame>.png``.

    ``inputs`` lists, as ``(description, path)``, the folders a sweep's outputs must keep clear of.

    Args:
        source: a folder of videos.
        gt: ground truth of every frame, in the generic scorer's layout.
        sequences: run only these videos (default: every video of ``source``).

    Raises:
        SourceError: ``source`` is not a folder of videos, a requested video does not exist, or a
            ground-truth folder has a sequence without video (unless ``sequences`` leaves it out).
        MaskError: a video without ground truth, or whose first ground-truth PNG is not named
            like its first frame (the mask would be applied to the wrong frame).
    """

    def __init__(self, source: str | os.PathLike, gt: str | os.PathLike, sequences: Sequence[str] | None = None):
        from vidprop.io.frames import open_source
        from vidprop.io.masks import list_mask_files
        from vidprop.pipeline import list_videos

        self.source, self.gt = Path(source), Path(gt)
        batch, found = list_videos(self.source)
        if not batch:
            raise SourceError("the generic sweep takes a folder of videos (sub-folders of frames or video files)", self.source)
        if not self.gt.is_dir():
            raise SourceError("ground-truth folder does not exist", self.gt)
        names = [name for name, _ in found]
        if sequences:
            unknown = [s for s in sequences if s not in names]
            if unknown:
                raise SourceError(f"no video named {', '.join(unknown)} (found {', '.join(names)})", self.source)
            found = [(n, p) for n, p in found if n in set(sequences)]
        gt_names = sorted(p.name for p in self.gt.iterdir() if p.is_dir() and list_mask_files(p))
        orphans = [n for n in gt_names if n not in names]
        if orphans and not sequences:
            raise SourceError(f"ground truth for sequence(s) without a video in {self.source}: {', '.join(orphans)}", self.gt)
        self.skipped = tuple(n for n in gt_names if n not in {name for name, _ in found})
        self.videos = []
        for name, path in found:
            masks = list_mask_files(self.gt / name) if (self.gt / name).is_dir() else []
            if not masks:
                raise MaskError(f"no ground truth for video {name!r} (expected {self.gt / name}/<frame>.png)", self.gt)
            frames = open_source(path)
            if masks[0].stem != frames.names[0]:
                raise MaskError(
                    f"the first ground-truth mask {masks[0].name} is not named like the first frame "
                    f"{frames.names[0]!r} of {path}: masks must cover every frame from the first",
                    masks[0],
                )
            self.videos.append(SweepVideo(name, frames, masks[0]))
        self.inputs = (("folder of videos", self.source), ("ground-truth folder", self.gt))
        _preflight(self.videos)

    @property
    def signature(self) -> dict:
        return {
            "mode": "folders",
            "source": str(self.source.expanduser().resolve()),
            "gt": str(self.gt.expanduser().resolve()),
            "sequences": [v.name for v in self.videos],
            "inputs": _inputs_digest(self.videos),
        }

    def describe(self) -> str:
        return f"{self.source} with ground truth {self.gt} ({len(self.videos)} videos)"

    def score(self, pred_dir: Path, config: Any) -> Any:
        """Scores of ``pred_dir`` as ``vidprop evaluate --gt GT --pred pred_dir`` with the config's scoring options."""
        from vidprop.errors import VidpropError
        from vidprop.scoring import evaluate_folders

        scoring = config.scoring
        on_missing = "skip" if self.skipped else scoring.on_missing_sequence
        scores = evaluate_folders(self.gt, pred_dir, config=scoring, processes=scoring.processes or 1, on_missing_sequence=on_missing)
        if tuple(sorted(scores.skipped_sequences)) != tuple(sorted(self.skipped)):
            raise VidpropError(f"{pred_dir}: scored {scores.sequences}, expected the sweep's videos {[v.name for v in self.videos]}")
        return scores
