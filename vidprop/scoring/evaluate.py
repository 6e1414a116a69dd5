"""Score predicted label PNGs against ground truth: DAVIS-2017 J&F, parallel over frame chunks.

Two entry points:

* :func:`evaluate_davis` gives exactly the numbers of the official DAVIS-2017 semi-supervised
  evaluation (davisvideochallenge/davis2017-evaluation, ``--task semi-supervised``): sequences
  from ``ImageSets/2017/<split>.txt``, ground truth from ``Annotations/<resolution>/<seq>/*.png``
  (read through :class:`~vidprop.io.davis.DavisDataset`, the one reader of the layout) in the
  official tool's frame order (names sorted as strings, so ``10.png`` comes before ``2.png``; a
  warning says so when that differs from natural order), the first and last frame not scored,
  objects = ids ``1..N`` with ``N`` the largest id of the first ground-truth frame, void (255)
  counted as background.
* :func:`evaluate_folders` scores any two folders of sequences, frames in natural order: objects
  are the union of the ids found in the scored ground-truth and prediction frames (ids may be
  non-contiguous), each object is scored from the frame after the one where its ground truth
  first appears (objects may enter late, as in YouTube-VOS), and void can be left out of the
  measures (``ignore_void``); ``binary`` reads binary masks (DAVIS-2016 style 0/255) as one object.

Both check the whole layout (every sequence and every prediction file) before decoding a single
mask, and name the file at fault when a mask has the wrong size or an unknown object id.

Work is spread over frame chunks: in forked worker processes when forking is safe (this process
is single-threaded and has not imported torch), otherwise in threads, whose heavier calls (PNG
inflate, the larger numpy and OpenCV operations) release the GIL. Neither re-imports the
caller's ``__main__``, so a script without ``if __name__ == "__main__":`` is safe; when workers
cannot start, scoring runs in the calling thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import multiprocessing
import os
import sys
import threading
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from vidprop.config_base import check, replace_options
from vidprop.errors import InputError, MaskError, ShapeError, SourceError
from vidprop.io.davis import DavisDataset
from vidprop.io.frames import natural_key
from vidprop.io.masks import VOID_ID, list_mask_files
from vidprop.log import progress
from vidprop.scoring.config import ON_MISSING_CHOICES, ScoringConfig
from vidprop.scoring.measures import boundary_radius, frame_measures, sequence_statistics
from vidprop.scoring.png import read_ids

__all__ = ["ObjectScores", "DavisScores", "evaluate_davis", "evaluate_folders", "GLOBAL_COLUMNS"]

logger = logging.getLogger(__name__)


GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
"""Column names of the official ``global_results-<set>.csv``."""


@dataclass(frozen=True)
class ObjectScores:
    """J and F of one object of one sequence.

    Attributes:
        sequence: sequence name.
        object_id: the object's id in the PNGs (DAVIS parity: 1..N).
        frames: names (without extension) of the scored frames, in order.
        j, f: (T,) float64 per-frame region similarity and boundary F-measure, in [0, 1].
        j_mean, j_recall, j_decay, f_mean, f_recall, f_decay: the official per-object statistics
            (mean; fraction of frames > 0.5; mean of the first minus the last quarter).
    """

    sequence: str
    object_id: int
    frames: tuple[str, ...] = field(repr=False)
    j: np.ndarray = field(repr=False, compare=False)
    f: np.ndarray = field(repr=False, compare=False)
    j_mean: float = math.nan
    j_recall: float = math.nan
    j_decay: float = math.nan
    f_mean: float = math.nan
    f_recall: float = math.nan
    f_decay: float = math.nan

    @classmethod
    def from_frames(cls, sequence: str, object_id: int, frames: Sequence[str], j: np.ndarray, f: np.ndarray) -> "ObjectScores":
        """Build the scores (and their statistics) from per-frame values."""
        j_stats, f_stats = sequence_statistics(j), sequence_statistics(f)
        return cls(sequence, int(object_id), tuple(frames), j, f, *j_stats, *f_stats)

    @property
    def name(self) -> str:
        """Row name of the official per-sequence CSV: ``<sequence>_<object_id>``."""
        return f"{self.sequence}_{self.object_id}"


def _global_stat(attr: str, doc: str) -> property:
    def get(self: "DavisScores") -> float:
        return float(np.mean([getattr(o, attr) for o in self.objects])) if self.objects else math.nan

    return property(get, doc=doc)


@dataclass(frozen=True)
class DavisScores:
    """Scores of a set of sequences (unrounded). Global statistics average over all objects.

    Attributes:
        objects: per-object scores, sequences in evaluation order, objects by id.
        skipped_sequences: sequences left out because their predictions were missing
            (``on_missing_sequence="skip"``).
        parity: True for the official DAVIS semantics (:func:`evaluate_davis`).
    """

    objects: tuple[ObjectScores, ...]
    skipped_sequences: tuple[str, ...] = ()
    parity: bool = True

    j_mean = _global_stat("j_mean", "Mean J over all objects.")
    j_recall = _global_stat("j_recall", "Mean J-Recall over all objects.")
    j_decay = _global_stat("j_decay", "Mean J-Decay over all objects.")
    f_mean = _global_stat("f_mean", "Mean F over all objects.")
    f_recall = _global_stat("f_recall", "Mean F-Recall over all objects.")
    f_decay = _global_stat("f_decay", "Mean F-Decay over all objects.")

    @property
    def j_and_f_mean(self) -> float:
        """(J-Mean + F-Mean) / 2, the DAVIS headline number."""
        return (self.j_mean + self.f_mean) / 2.0

    @property
    def sequences(self) -> tuple[str, ...]:
        """Names of the scored sequences, in order."""
        return tuple(dict.fromkeys(o.sequence for o in self.objects))

    def global_stats(self) -> dict[str, float]:
        """The global statistics keyed by the official column names (:data:`GLOBAL_COLUMNS`)."""
        values = (self.j_and_f_mean, self.j_mean, self.j_recall, self.j_decay, self.f_mean, self.f_recall, self.f_decay)
        return dict(zip(GLOBAL_COLUMNS, values))


# --------------------------------------------------------------------------------------------
# Layout: which files to score


@dataclass(frozen=True)
class _Options:
    """How frames are read into objects (generic folders only; DAVIS parity mode uses neither)."""

    ignore_void: bool = False  # leave ground-truth void pixels out of J and F
    binary: bool = False  # every non-zero pixel is the one object (DAVIS-2016 style 0/255 masks)


@dataclass(frozen=True)
class _SequenceJob:
    """The scored frames of one sequence and how to read their objects."""

    name: str
    frames: tuple[str, ...]  # scored frame names (no extension)
    gt_paths: tuple[Path, ...]
    pred_paths: tuple[Path, ...]
    size: tuple[int, int]  # (H, W) of the first ground-truth frame
    num_objects: int | None  # DAVIS parity: ids 1..N; None: ids found in the frames
    given: bool = False  # generic: each object's first ground-truth frame is the given one, not scored
    first_ids: tuple[int, ...] = ()  # generic, given: non-zero values of the (unscored) first ground-truth frame


BINARY_HINT = (
    "to score binary 0/255 masks (DAVIS-2016 style), use --gt/--pred with --binary "
    "(Python: evaluate_folders(..., binary=True)), which reads every non-zero pixel as the one object"
)


def _first_objects(path: Path) -> tuple[int, tuple[int, int], bool]:
    """Largest object id (void counted as background), (H, W) and whether void is present, of a
    ground-truth frame."""
    ids = read_ids(path)
    counts = np.bincount(ids.ravel(), minlength=256)
    present = np.flatnonzero(counts[:VOID_ID])
    return int(present[-1]) if len(present) else 0, ids.shape, bool(counts[VOID_ID])


def _plan_sequence(
    name: str, gt_files: list[Path], pred_dir: Path, parity: bool, skip_first_last: bool
) -> _SequenceJob:
    """Check one sequence's files and list its scored frames (no mask is decoded except the first)."""
    needed = 3 if skip_first_last else 1
    if len(gt_files) < needed:
        raise SourceError(
            f"sequence {name!r} has {len(gt_files)} ground-truth frame(s); at least {needed} are needed"
            + (" because the first and the last frame are not scored" if skip_first_last else ""),
            gt_files[0].parent if gt_files else None,
        )
    scored = gt_files[1:-1] if skip_first_last else gt_files
    present = {p.name for p in pred_dir.iterdir()}
    missing = [p.name for p in scored if p.name not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise MaskError(
            f"prediction missing for {len(missing)} of the {len(scored)} scored frames of sequence {name!r} ({shown})",
            pred_dir / missing[0],
        )
    first_ids: tuple[int, ...] = ()
    if parity:
        num_objects, size, void = _first_objects(gt_files[0])
    else:
        first = read_ids(gt_files[0])
        num_objects, size, void = None, first.shape, False
        if skip_first_last:
            first_ids = tuple(int(i) for i in np.flatnonzero(np.bincount(first.ravel(), minlength=256)[1:]) + 1)
    if parity and num_objects == 0:
        why = f": its pixels are only 0 and {VOID_ID}, and {VOID_ID} is void; {BINARY_HINT}" if void else ""
        raise MaskError(f"the first ground-truth frame of sequence {name!r} has no object{why}", gt_files[0])
    return _SequenceJob(
        name=name,
        frames=tuple(p.stem for p in scored),
        gt_paths=tuple(scored),
        pred_paths=tuple(pred_dir / p.name for p in scored),
        size=tuple(size),
        num_objects=num_objects,
        given=skip_first_last and not parity,
        first_ids=first_ids,
    )


def _official_order(sequences: list[tuple[str, list[Path], Path]]) -> list[tuple[str, list[Path], Path]]:
    """Ground-truth frames in the official tool's order, names sorted as strings (it sorts the paths
    with ``np.sort``), with one warning for the sequences where that is not their natural order."""
    out, unpadded = [], []
    for name, gt_files, pred_dir in sequences:
        ordered = sorted(gt_files, key=lambda p: p.name)
        if ordered != sorted(gt_files, key=lambda p: natural_key(p.name)):
            unpadded.append((name, ordered))
        out.append((name, ordered, pred_dir))
    if unpadded:
        name, ordered = unpadded[0]
        logger.warning(
            "%s: frame names are not zero-padded in %d sequence(s) (%s). DAVIS parity mode orders frames as the "
            "official tool does, by name as text (%s), so the first and the last (unscored) frames are %s and %s "
            "and Decay follows that order. Rename the frames zero-padded (00000.png, ...) to score them in time "
            "order, or use --gt/--pred, which orders frames naturally.",
            ordered[0].parent.parent, len(unpadded), ", ".join(n for n, _ in unpadded),
            ", ".join(p.stem for p in ordered[:4]) + ", ...", ordered[0].name, ordered[-1].name,
        )  # fmt: skip
    return out


def _missing_message(missing: list[str], present: list[str], total: int, parity: bool) -> str:
    shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    message = f"no predictions for {len(missing)} of the {total} sequences ({shown}); each needs a folder <results>/<sequence>/ of PNGs"
    if not present:
        return message + " (is this the right results folder?)"
    subset = f"--sequences {','.join(present)} or " if parity else ""
    return (
        f"{message}. To score only the {len(present)} sequence(s) present, add {subset}--skip-missing "
        f"(Python: {'sequences=[...] or ' if parity else ''}on_missing_sequence='skip')"
    )


def _plan(
    sequences: Iterable[tuple[str, list[Path], Path]], parity: bool, skip_first_last: bool, on_missing: str
) -> tuple[list[_SequenceJob], list[str]]:
    """Plan every ``(name, ground-truth PNGs, prediction folder)``; missing folders per ``on_missing``.

    Every sequence is checked first, so that an error lists all the missing ones at once.
    """
    check(on_missing in ON_MISSING_CHOICES, "on_missing", on_missing, " or ".join(map(repr, ON_MISSING_CHOICES)))
    sequences = list(sequences)
    if parity:
        sequences = _official_order(sequences)
    missing = [(name, pred_dir) for name, _, pred_dir in sequences if not pred_dir.is_dir()]
    if missing and on_missing == "error":
        present = [name for name, _, pred_dir in sequences if pred_dir.is_dir()]
        names = [name for name, _ in missing]
        raise SourceError(_missing_message(names, present, len(sequences), parity), missing[0][1].parent)
    jobs, skipped = [], []
    for name, gt_files, pred_dir in sequences:
        if not pred_dir.is_dir():
            logger.warning("%s: no predictions for sequence %r; skipped", pred_dir, name)
            skipped.append(name)
            continue
        jobs.append(_plan_sequence(name, gt_files, pred_dir, parity, skip_first_last))
    if not jobs:
        raise SourceError("no sequence to score: the predictions of every sequence are missing", sequences[-1][2].parent)
    return jobs, skipped


def _check_results_dir(path: Path) -> Path:
    if not path.is_dir():
        raise SourceError("results folder does not exist", path)
    return path


def _davis_sequences(
    davis_root: Path, split: str, resolution: str, only: Sequence[str] | None = None
) -> list[tuple[str, list[Path]]]:
    dataset = DavisDataset(davis_root, split=split, resolution=resolution, frames=False)
    return [(name, dataset.annotation_paths(name)) for name in dataset.select(only)]


def _folder_sequences(gt_root: Path) -> list[tuple[str, list[Path]]]:
    if not gt_root.is_dir():
        raise SourceError("ground-truth folder does not exist", gt_root)
    direct = list_mask_files(gt_root)
    if direct:  # a single sequence given directly
        return [("", direct)]
    out = [(d.name, files) for d in sorted(p for p in gt_root.iterdir() if p.is_dir()) if (files := list_mask_files(d))]
    if not out:
        raise SourceError("no ground-truth sequences (expected sub-folders of PNGs, or PNGs)", gt_root)
    return out


# --------------------------------------------------------------------------------------------
# Scoring work (runs in worker processes or threads)

_WORKER: dict = {}


def _init_worker(jobs: list[_SequenceJob], options: _Options, own_process: bool) -> None:
    _WORKER["jobs"] = jobs
    _WORKER["options"] = options
    if own_process:
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from the processes


def _histogram(ids: np.ndarray) -> np.ndarray:
    """(256,) pixel count of every value of a uint8 map."""
    import cv2

    return cv2.calcHist([np.ascontiguousarray(ids)], [0], None, [256], [0, 256]).ravel()


def _binary(ids: np.ndarray, counts: np.ndarray, path: Path, what: str) -> np.ndarray:
    """0/1 map of a binary mask (one non-zero value, whichever it is)."""
    values = np.flatnonzero(counts[1:]) + 1
    if len(values) > 1:
        shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
        raise MaskError(
            f"{what} has {len(values)} different non-zero values ({shown}), but binary scoring reads masks of one "
            "object (0 and one other value, e.g. 255 or 1); soft or anti-aliased masks must be thresholded first, "
            "multi-object masks scored without --binary",
            path,
        )
    return (ids != 0).view(np.uint8)


def _score_frame(job: _SequenceJob, index: int, options: _Options) -> tuple[np.ndarray, list[float], list[float], np.ndarray, bool]:
    """Object ids and their J, F in scored frame ``index`` of ``job`` (ids absent from both maps are
    left out), whether the ground truth has each of them there, and whether it has a void pixel."""
    gt_path, pred_path = job.gt_paths[index], job.pred_paths[index]
    gt, pred = read_ids(gt_path), read_ids(pred_path)
    (h, w), (gh, gw) = job.size, gt.shape
    if (gh, gw) != (h, w):
        raise ShapeError(f"ground-truth frame is {gw}x{gh} but the sequence's first frame is {w}x{h} (width x height)", gt_path)
    if pred.shape != gt.shape:
        ph, pw = pred.shape
        raise ShapeError(f"prediction is {pw}x{ph} but its ground truth {gt_path} is {gw}x{gh} (width x height)", pred_path)
    void = None
    if job.num_objects is not None:
        top = int(pred.max())
        if top > job.num_objects:
            raise MaskError(
                f"prediction has object id {top}, but sequence {job.name!r} has {job.num_objects} object(s) "
                f"(ids 1..{job.num_objects}, from the largest id in its first ground-truth frame)",
                pred_path,
            )
        ids = np.arange(1, job.num_objects + 1)
        in_gt, gt_void = np.ones(len(ids), bool), False
    else:
        gt_counts, pred_counts = _histogram(gt), _histogram(pred)
        if options.binary:
            gt, pred = _binary(gt, gt_counts, gt_path, "ground truth"), _binary(pred, pred_counts, pred_path, "prediction")
            ids = np.ones(1, np.int64)
            in_gt, gt_void = np.array([gt_counts[1:].any()]), False
        else:
            counts = gt_counts + pred_counts
            counts[[0, VOID_ID]] = 0
            ids = np.flatnonzero(counts)
            in_gt, gt_void = gt_counts[ids] > 0, bool(gt_counts[VOID_ID])
            if options.ignore_void and gt_void:
                void = gt == VOID_ID
    js, fs = frame_measures(gt, pred, ids, boundary_radius(gt.shape), void)
    return ids, js, fs, in_gt, gt_void


def _score_chunk(task: tuple[int, int, int]):
    """Score frames ``start:stop`` of job ``seq``; returns arrays, or the input error to re-raise."""
    seq, start, stop = task
    job = _WORKER["jobs"][seq]
    frames, ids, js, fs, gt = [], [], [], [], []
    gt_void = False
    try:
        for i in range(start, stop):
            frame_ids, frame_j, frame_f, in_gt, has_void = _score_frame(job, i, _WORKER["options"])
            frames.extend([i] * len(frame_ids))
            ids.extend(frame_ids)
            js.extend(frame_j)
            fs.extend(frame_f)
            gt.extend(in_gt)
            gt_void |= has_void
    except InputError as exc:  # exceptions with a path do not survive pickling: send the parts
        return "error", (type(exc), exc.message, exc.path)
    arrays = (np.asarray(frames, np.int64), np.asarray(ids, np.int64), np.asarray(js), np.asarray(fs), np.asarray(gt, bool))
    return "ok", (seq, *arrays, gt_void)


def _default_processes() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# Libraries whose native thread pools make a forked child hang if the parent has used them.
_THREADED_LIBRARIES = ("torch", "tensorflow", "jax", "decord")


def _fork_is_safe() -> bool:
    """Whether worker processes may be forked: fork is available and this process is plainly
    single-threaded. Forking a process whose threads hold locks (a prefetch thread, a progress-bar
    monitor, torch's OpenMP pool) can deadlock the children; native thread pools are invisible to
    ``threading``, hence the module check. The other start methods (spawn, forkserver) re-import
    the caller's ``__main__`` in every worker, which re-runs a script that has no
    ``if __name__ == "__main__":`` guard, so they are never used."""
    return (
        "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and not any(m in sys.modules for m in _THREADED_LIBRARIES)
    )


def _chunks(jobs: list[_SequenceJob], processes: int) -> list[tuple[int, int, int]]:
    """Split every sequence into frame ranges, about 4 per process in all, largest first."""
    total = sum(len(j.frames) for j in jobs)
    size = max(8, math.ceil(total / (4 * processes)))
    tasks = []
    for s, job in enumerate(jobs):
        n = len(job.frames)
        parts = max(1, round(n / size))
        bounds = np.linspace(0, n, parts + 1).round().astype(int)
        tasks.extend((s, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a)
    return sorted(tasks, key=lambda t: t[1] - t[2])


def _executor(kind: str, workers: int, jobs: list[_SequenceJob], options: _Options) -> concurrent.futures.Executor:
    if kind == "processes":
        context = multiprocessing.get_context("fork")
        return concurrent.futures.ProcessPoolExecutor(workers, context, _init_worker, (jobs, options, True))
    _init_worker(jobs, options, own_process=False)
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="vidprop-scoring")


def _run(jobs: list[_SequenceJob], options: _Options, processes: int | None) -> list:
    """Every chunk's result, up to the first input error: in forked processes when that is safe,
    else in threads; in the calling thread for ``processes=1`` or when no worker can start."""
    processes = processes or _default_processes()
    tasks = _chunks(jobs, processes)
    workers = min(processes, len(tasks))
    try:
        if workers > 1:
            kind = "processes" if _fork_is_safe() else "threads"
            logger.debug("scoring %d chunks in %d %s", len(tasks), workers, kind)
            try:
                with _executor(kind, workers, jobs, options) as executor:
                    futures = [executor.submit(_score_chunk, task) for task in tasks]
                    try:
                        return _until_error((f.result() for f in concurrent.futures.as_completed(futures)), len(tasks))
                    finally:
                        for future in futures:
                            future.cancel()
            except (OSError, RuntimeError, BrokenProcessPool) as exc:  # fork/thread limits, a killed worker
                logger.warning("scoring workers (%s) could not run (%s); scoring in this thread instead", kind, exc)
        _init_worker(jobs, options, own_process=False)
        return _until_error(map(_score_chunk, tasks), len(tasks))
    finally:
        _WORKER.clear()


def _until_error(results, total: int) -> list:
    """Chunk results, with a progress bar, up to and including the first error."""
    out = []
    for status, payload in progress(results, total=total, desc="scoring", unit="chunk"):
        out.append((status, payload))
        if status == "error":
            break
    return out


def _no_object_error(job: _SequenceJob, options: _Options, void: bool) -> MaskError:
    frames = f"its {len(job.frames)} scored frames"
    if options.binary:
        return MaskError(f"ground truth of sequence {job.name!r} has no object: every pixel of {frames} is 0", job.gt_paths[0].parent)
    if void:
        return MaskError(
            f"ground truth of sequence {job.name!r} has no object: the pixels of {frames} are only 0 and {VOID_ID}, "
            f"and {VOID_ID} is read as void (DAVIS-2017 convention), not as an object; {BINARY_HINT}",
            job.gt_paths[0].parent,
        )
    return MaskError(f"ground truth of sequence {job.name!r} has no object: every pixel of {frames} is 0", job.gt_paths[0].parent)


def _collect(jobs: list[_SequenceJob], results: list, options: _Options) -> list[ObjectScores]:
    per_seq: list[list] = [[] for _ in jobs]
    for status, payload in results:
        if status == "error":
            cls, message, path = payload
            raise cls(message, path)
        per_seq[payload[0]].append(payload[1:])
    objects = []
    for job, parts in zip(jobs, per_seq):
        frames, ids, js, fs, gt, gt_void = zip(*parts)
        frames, ids, js, fs, gt = (np.concatenate(a) for a in (frames, ids, js, fs, gt))
        if not gt.any():
            raise _no_object_error(job, options, any(gt_void))
        object_ids = np.arange(1, job.num_objects + 1) if job.num_objects is not None else np.unique(ids)
        # Objects absent from both maps of a frame score 1 there (empty union, two empty boundaries).
        j = np.ones((len(object_ids), len(job.frames)))
        f = np.ones_like(j)
        rows = np.searchsorted(object_ids, ids)
        j[rows, frames] = js
        f[rows, frames] = fs
        starts = _object_starts(job, object_ids, rows, frames, gt, options)
        objects.extend(ObjectScores.from_frames(job.name, k, job.frames[a:], j[r, a:], f[r, a:])
                       for r, (k, a) in enumerate(zip(object_ids, starts)) if a < len(job.frames))
        late = [f"{k} (frame {job.frames[-1]})" for k, a in zip(object_ids, starts) if a == len(job.frames)]
        if late:
            logger.warning(
                "sequence %r: object(s) %s first appear in the ground truth on the last scored frame, which is "
                "their given frame: they have no scored frame and are left out", job.name, ", ".join(late),
            )
    return objects


def _object_starts(job: _SequenceJob, object_ids: np.ndarray, rows: np.ndarray, frames: np.ndarray,
                   gt: np.ndarray, options: _Options) -> np.ndarray:
    """Index of each object's first scored frame.

    DAVIS parity: 0 for every object. Generic folders: an object is scored from the first frame
    whose ground truth has it; in the semi-supervised protocol (``given``) that frame is the given
    one and is not scored, as the first frame is not in DAVIS (an object in the first ground-truth
    frame starts at 0). An object never in the scored ground truth (a prediction only) starts at 0.
    """
    starts = np.zeros(len(object_ids), np.int64)
    if job.num_objects is not None:
        return starts
    entry = np.full(len(object_ids), len(job.frames), np.int64)
    np.minimum.at(entry, rows[gt], frames[gt])
    seen = entry < len(job.frames)
    starts[seen] = entry[seen] + (1 if job.given else 0)
    given_first = (1,) if options.binary and job.first_ids else job.first_ids  # binary: any non-zero pixel is object 1
    starts[np.isin(object_ids, given_first)] = 0
    return starts


def _evaluate(jobs, skipped, options: _Options, processes, parity) -> DavisScores:
    frames = sum(len(j.frames) for j in jobs)
    logger.info("scoring %d frames of %d sequences", frames, len(jobs))
    objects = _collect(jobs, _run(jobs, options, processes), options)
    return DavisScores(objects=tuple(objects), skipped_sequences=tuple(skipped), parity=parity)


def evaluate_davis(
    davis_root: str | os.PathLike,
    results_dir: str | os.PathLike,
    split: str = "val",
    sequences: Sequence[str] | None = None,
    *,
    config: ScoringConfig | None = None,
    resolution: str = "480p",
    **overrides: Any,
) -> DavisScores:
    """Score DAVIS-2017 semi-supervised predictions exactly as the official evaluation does.

    Args:
        davis_root: DAVIS folder with ``ImageSets/2017/<split>.txt`` and ``Annotations/<resolution>/<seq>/``
            (read through :class:`~vidprop.io.davis.DavisDataset`).
        results_dir: folder with ``<seq>/<frame>.png`` (palette or grayscale PNGs of object ids).
        split: sequence list to score ("val", "train", ...).
        sequences: score only these sequences of the split (in split order); None = all.
        config: the scoring options (default ``ScoringConfig()``): ``processes`` (parallel
            workers, None = one per CPU core, 1 = in the calling thread: forked processes when
            forking is safe, otherwise threads, see the module docstring) and
            ``on_missing_sequence`` (sequences without a prediction folder are an ``"error"``,
            listing all of them, or are ``"skip"`` ped with a warning). ``ignore_void``,
            ``skip_first_last`` and ``binary`` must keep their defaults: parity mode follows
            the official tool.
        resolution: the ground truth's resolution folder, ``"480p"`` or ``"Full-Resolution"``
            (the official tool's ``resolution``); predictions must have its size.
        **overrides: fields of ``config`` to replace, e.g. ``processes=2``.

    Returns:
        Unrounded :class:`DavisScores` (the official tool rounds to 3 decimals only when writing).

    Raises:
        ConfigError: an unknown option, or ``ignore_void``/``skip_first_last``/``binary`` changed.
        DavisLayoutError: no split file, a sequence without ground truth, a ``sequences`` name
            that is not in the split.
        SourceError: missing results folder or sequence folders (with ``on_missing_sequence="error"``;
            the message lists every missing sequence and how to score the ones present), or a
            sequence with fewer than 3 frames.
        MaskError: a missing prediction frame, an unreadable or lossy (JPEG) file, a first
            ground-truth frame without object, a prediction id larger than the number of objects
            in the first ground-truth frame (the official tool prints a message and exits with
            status 0 and no results there).
        ShapeError: a prediction whose size differs from its ground truth.

    As in the official tool, frames are taken in the order of their names sorted as text
    (``10.png`` before ``2.png``; a warning says when that is not the natural order), and an id
    missing from the first frame below the largest one (ids 1 and 3) is an object that is absent
    everywhere, so it scores 1 in every frame the prediction also leaves it out.
    """
    config = replace_options(config or ScoringConfig(), overrides, "scoring.")
    for key, parity_value in (("ignore_void", False), ("skip_first_last", True), ("binary", False)):
        check(
            getattr(config, key) == parity_value, f"scoring.{key}", getattr(config, key),
            f"{parity_value} for DAVIS scoring, which follows the official tool (the option applies to generic folders)",
        )
    results = _check_results_dir(Path(results_dir))
    listed = _davis_sequences(Path(davis_root), split, resolution, sequences)
    jobs, skipped = _plan([(name, files, results / name) for name, files in listed], True, True, config.on_missing_sequence)
    return _evaluate(jobs, skipped, _Options(), config.processes, parity=True)


def evaluate_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    *,
    config: ScoringConfig | None = None,
    **overrides: Any,
) -> DavisScores:
    """Score predictions of any dataset laid out as ``<dir>/<seq>/<frame>.png``.

    Objects of a sequence are the union of the ids (other than 0 and void 255) found in its scored
    ground-truth and prediction frames, so ids may be non-contiguous, and an id only in the
    predictions counts as an object (scoring 0 where it is predicted, 1 elsewhere).

    Objects may appear late (YouTube-VOS; keyframes): each object is scored from the first frame
    on which its ground truth has it. With ``skip_first_last`` (the semi-supervised protocol) that
    frame is the object's given frame and is not scored either, just as the first frame is not,
    so an object that enters at frame 7 of 10 is scored on frame 8 alone (and one that enters on
    the last scored frame has no scored frame: it is left out, with a warning). Frames before an
    object's first ground truth do not count for it, predicted or not; after it, a frame where
    both maps lack the object scores 1. hkchengrex/vos-benchmark starts an object at its first
    appearance in either map and scores that frame too; on videos cut at an object's entry both
    give the same numbers (tests/data/scoring_vos_benchmark.json). Rows are
    named ``<seq>_<id>``. Sequences are the sub-folders of ``gt_dir`` that hold PNGs (or ``gt_dir``
    itself if it holds PNGs, then named ""); predictions for other sequences are ignored. Frames
    are taken in natural order (``2.png`` before ``10.png``).

    Args:
        gt_dir: ground-truth folder.
        pred_dir: prediction folder with the same sequence and frame names.
        config: the scoring options (default ``ScoringConfig()``):

            - ``ignore_void``: leave ground-truth void pixels out of J and F (as the official
              tool does in its unsupervised task) instead of counting them as background;
            - ``skip_first_last``: do not score the first and the last frame, nor the frame
              where an object first appears (DAVIS semi-supervised protocol); False scores every
              frame from each object's first appearance on;
            - ``binary``: binary masks (DAVIS-2016 style, 0/255 or 0/1): every non-zero pixel,
              255 included, is the one object (row ``<seq>_1``); a mask with two different
              non-zero values is an error. Without it 255 is void, and a 0/255 ground truth has
              no object;
            - ``processes``, ``on_missing_sequence``: as in :func:`evaluate_davis`.
        **overrides: fields of ``config`` to replace, e.g. ``binary=True``.

    Returns:
        Unrounded :class:`DavisScores` with ``parity=False``.

    Raises:
        MaskError: as :func:`evaluate_davis`, and a sequence whose ground truth has no object in
            its scored frames (e.g. 0/255 masks without ``binary``; the message says how to score
            them), or, with ``binary``, a mask with several non-zero values.
        ConfigError: an unknown option, or ``binary`` together with ``ignore_void``.
    """
    config = replace_options(config or ScoringConfig(), overrides, "scoring.")
    gt_root, pred_root = Path(gt_dir), _check_results_dir(Path(pred_dir))
    sequences = [
        (name or gt_root.name, files, pred_root / name if name else pred_root) for name, files in _folder_sequences(gt_root)
    ]
    jobs, skipped = _plan(sequences, False, config.skip_first_last, config.on_missing_sequence)
    return _evaluate(jobs, skipped, _Options(config.ignore_void, config.binary), config.processes, parity=False)
