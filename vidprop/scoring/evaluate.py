"""Score predicted label PNGs against ground truth: DAVIS-2017 J&F, parallel over frame chunks.

Two entry points:

* :func:`evaluate_davis` gives exactly the numbers of the official DAVIS-2017 semi-supervised
  evaluation (davisvideochallenge/davis2017-evaluation, ``--task semi-supervised``): sequences
  from ``ImageSets/2017/<split>.txt``, ground truth from ``Annotations/480p/<seq>/*.png``, the first
  and last frame not scored, objects = ids ``1..N`` with ``N`` the largest id of the first
  ground-truth frame, void (255) counted as background.
* :func:`evaluate_folders` scores any two folders of sequences: objects are the union of the ids
  found in the scored ground-truth and prediction frames (ids may be non-contiguous), and void can be
  left out of the measures (``ignore_void``).

Both check the whole layout (every sequence and every prediction file) before decoding a single
mask, and name the file at fault when a mask has the wrong size or an unknown object id.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from vidprop.config_base import check
from vidprop.errors import DavisLayoutError, InputError, MaskError, ShapeError, SourceError
from vidprop.io.davis import read_split
from vidprop.io.masks import VOID_ID, list_mask_files
from vidprop.log import progress
from vidprop.scoring.config import ON_MISSING_CHOICES
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
            (``on_missing="skip"``).
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
class _SequenceJob:
    """The scored frames of one sequence and how to read their objects."""

    name: str
    frames: tuple[str, ...]  # scored frame names (no extension)
    gt_paths: tuple[Path, ...]
    pred_paths: tuple[Path, ...]
    size: tuple[int, int]  # (H, W) of the first ground-truth frame
    num_objects: int | None  # DAVIS parity: ids 1..N; None: ids found in the frames


def _first_objects(path: Path) -> tuple[int, tuple[int, int]]:
    """Largest object id (void counted as background) and (H, W) of a ground-truth frame."""
    ids = read_ids(path)
    present = np.flatnonzero(np.bincount(ids.ravel(), minlength=256)[:VOID_ID])
    return int(present[-1]) if len(present) else 0, ids.shape


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
    num_objects, size = _first_objects(gt_files[0]) if parity else (None, read_ids(gt_files[0]).shape)
    if parity and num_objects == 0:
        raise MaskError(f"the first ground-truth frame of sequence {name!r} has no object", gt_files[0])
    return _SequenceJob(
        name=name,
        frames=tuple(p.stem for p in scored),
        gt_paths=tuple(scored),
        pred_paths=tuple(pred_dir / p.name for p in scored),
        size=tuple(size),
        num_objects=num_objects,
    )


def _plan(
    sequences: Iterable[tuple[str, list[Path], Path]], parity: bool, skip_first_last: bool, on_missing: str
) -> tuple[list[_SequenceJob], list[str]]:
    """Plan every ``(name, ground-truth PNGs, prediction folder)``; missing folders per ``on_missing``."""
    check(on_missing in ON_MISSING_CHOICES, "on_missing", on_missing, " or ".join(map(repr, ON_MISSING_CHOICES)))
    jobs, skipped = [], []
    for name, gt_files, pred_dir in sequences:
        if not pred_dir.is_dir():
            if on_missing == "skip":
                logger.warning("%s: no predictions for sequence %r; skipped", pred_dir, name)
                skipped.append(name)
                continue
            raise SourceError(
                f"no predictions for sequence {name!r} (expected a folder of PNGs; use on_missing='skip' "
                "or --skip-missing to score the other sequences)",
                pred_dir,
            )
        jobs.append(_plan_sequence(name, gt_files, pred_dir, parity, skip_first_last))
    if not jobs:
        raise SourceError("no sequence to score: the predictions of every sequence are missing", pred_dir.parent)
    return jobs, skipped


def _check_results_dir(path: Path) -> Path:
    if not path.is_dir():
        raise SourceError("results folder does not exist", path)
    return path


def _davis_sequences(davis_root: Path, split: str, only: Sequence[str] | None = None) -> list[tuple[str, list[Path]]]:
    split_file = davis_root / "ImageSets" / "2017" / f"{split}.txt"
    annotations = davis_root / "Annotations" / "480p"
    if not davis_root.is_dir():
        raise DavisLayoutError("DAVIS root does not exist or is not a folder", davis_root)
    if not split_file.is_file():
        raise DavisLayoutError(f"no sequence list for split {split!r} (expected ImageSets/2017/{split}.txt)", split_file)
    names = read_split(split_file)
    if only is not None:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise DavisLayoutError(f"sequence(s) not in split {split!r}: {', '.join(unknown)}", split_file)
        names = [n for n in names if n in set(only)]
    out = []
    for name in names:
        folder = annotations / name
        files = list_mask_files(folder) if folder.is_dir() else []
        if not files:
            raise DavisLayoutError(f"sequence {name!r} of split {split!r} has no ground-truth PNGs", folder)
        out.append((name, files))
    return out


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
# Scoring work (runs in worker processes)

_WORKER: dict = {}


def _init_worker(jobs: list[_SequenceJob], ignore_void: bool, single_process: bool) -> None:
    _WORKER["jobs"] = jobs
    _WORKER["ignore_void"] = ignore_void
    if not single_process:
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from the processes


def _object_ids_in(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Ids other than background and void present in either map."""
    import cv2

    counts = cv2.calcHist([np.ascontiguousarray(gt)], [0], None, [256], [0, 256]).ravel()
    counts += cv2.calcHist([np.ascontiguousarray(pred)], [0], None, [256], [0, 256]).ravel()
    counts[[0, VOID_ID]] = 0
    return np.flatnonzero(counts)


def _score_frame(job: _SequenceJob, index: int, ignore_void: bool) -> tuple[np.ndarray, list[float], list[float]]:
    """Object ids and their J, F in scored frame ``index`` of ``job`` (ids absent from both maps are left out)."""
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
    else:
        ids = _object_ids_in(gt, pred)
        if ignore_void:
            void = gt == VOID_ID
            if not void.any():
                void = None
    js, fs = frame_measures(gt, pred, ids, boundary_radius(gt.shape), void)
    return ids, js, fs


def _score_chunk(task: tuple[int, int, int]):
    """Score frames ``start:stop`` of job ``seq``; returns arrays, or the input error to re-raise."""
    seq, start, stop = task
    job = _WORKER["jobs"][seq]
    frames, ids, js, fs = [], [], [], []
    try:
        for i in range(start, stop):
            frame_ids, frame_j, frame_f = _score_frame(job, i, _WORKER["ignore_void"])
            frames.extend([i] * len(frame_ids))
            ids.extend(frame_ids)
            js.extend(frame_j)
            fs.extend(frame_f)
    except InputError as exc:  # exceptions with a path do not survive pickling: send the parts
        return "error", (type(exc), exc.message, exc.path)
    return "ok", (seq, np.asarray(frames, np.int64), np.asarray(ids, np.int64), np.asarray(js), np.asarray(fs))


def _default_processes() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# Libraries whose native thread pools make a forked child hang if the parent has used them.
_THREADED_LIBRARIES = ("torch", "tensorflow", "jax", "decord")


def _pool_context():
    """Fork when this process is plainly single-threaded (fast: nothing to import again);
    otherwise a fork server. Forking a process whose threads hold locks (a prefetch thread, a
    progress-bar monitor, torch's OpenMP pool, a previous pool's handlers) can deadlock the
    children, and native thread pools are invisible to ``threading``, hence the module check."""
    methods = multiprocessing.get_all_start_methods()
    clean = threading.active_count() == 1 and not any(m in sys.modules for m in _THREADED_LIBRARIES)
    if "fork" in methods and clean:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


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


def _run(jobs: list[_SequenceJob], ignore_void: bool, processes: int | None) -> list:
    processes = processes or _default_processes()
    tasks = _chunks(jobs, processes)
    processes = min(processes, len(tasks))
    if processes == 1:
        _init_worker(jobs, ignore_void, single_process=True)
        try:
            return _until_error(map(_score_chunk, tasks), len(tasks))
        finally:
            _WORKER.clear()
    with _pool_context().Pool(processes, initializer=_init_worker, initargs=(jobs, ignore_void, False)) as pool:
        return _until_error(pool.imap_unordered(_score_chunk, tasks), len(tasks))  # leaving terminates the pool


def _until_error(results, total: int) -> list:
    """Chunk results, with a progress bar, up to and including the first error."""
    out = []
    for status, payload in progress(results, total=total, desc="scoring", unit="chunk"):
        out.append((status, payload))
        if status == "error":
            break
    return out


def _collect(jobs: list[_SequenceJob], results: list) -> list[ObjectScores]:
    per_seq: list[list] = [[] for _ in jobs]
    for status, payload in results:
        if status == "error":
            cls, message, path = payload
            raise cls(message, path)
        per_seq[payload[0]].append(payload[1:])
    objects = []
    for job, parts in zip(jobs, per_seq):
        frames, ids, js, fs = (np.concatenate(a) for a in zip(*parts))
        object_ids = np.arange(1, job.num_objects + 1) if job.num_objects is not None else np.unique(ids)
        # Objects absent from both maps of a frame score 1 there (empty union, two empty boundaries).
        j = np.ones((len(object_ids), len(job.frames)))
        f = np.ones_like(j)
        rows = np.searchsorted(object_ids, ids)
        j[rows, frames] = js
        f[rows, frames] = fs
        objects.extend(ObjectScores.from_frames(job.name, k, job.frames, j[r], f[r]) for r, k in enumerate(object_ids))
    return objects


def _evaluate(jobs, skipped, ignore_void, processes, parity) -> DavisScores:
    frames = sum(len(j.frames) for j in jobs)
    logger.info("scoring %d frames of %d sequences", frames, len(jobs))
    objects = _collect(jobs, _run(jobs, ignore_void, processes))
    return DavisScores(objects=tuple(objects), skipped_sequences=tuple(skipped), parity=parity)


def evaluate_davis(
    davis_root: str | os.PathLike,
    results_dir: str | os.PathLike,
    split: str = "val",
    processes: int | None = None,
    on_missing: str = "error",
    sequences: Sequence[str] | None = None,
) -> DavisScores:
    """Score DAVIS-2017 semi-supervised predictions exactly as the official evaluation does.

    Args:
        davis_root: DAVIS folder with ``ImageSets/2017/<split>.txt`` and ``Annotations/480p/<seq>/``.
        results_dir: folder with ``<seq>/<frame>.png`` (palette or grayscale PNGs of object ids).
        split: sequence list to score ("val", "train", ...).
        processes: worker processes (None = one per CPU core, 1 = in this process).
        on_missing: a sequence without a prediction folder is an ``"error"`` or is ``"skip"`` ped
            with a warning.
        sequences: score only these sequences of the split (in split order); None = all.

    Returns:
        Unrounded :class:`DavisScores` (the official tool rounds to 3 decimals only when writing).

    Raises:
        DavisLayoutError: no split file, a sequence without ground truth, a ``sequences`` name
            that is not in the split.
        SourceError: missing results folder or sequence folder (with ``on_missing="error"``), or a
            sequence with fewer than 3 frames.
        MaskError: a missing prediction frame, an unreadable PNG, a prediction id larger than the
            number of objects in the first ground-truth frame (the official tool prints a message
            and exits with status 0 and no results there).

    As in the official tool, an id missing from the first frame below the largest one (ids 1 and
    3) is an object that is absent everywhere, so it scores 1 in every frame the prediction also
    leaves it out.
        ShapeError: a prediction whose size differs from its ground truth.
    """
    results = _check_results_dir(Path(results_dir))
    listed = _davis_sequences(Path(davis_root), split, sequences)
    jobs, skipped = _plan([(name, files, results / name) for name, files in listed], True, True, on_missing)
    return _evaluate(jobs, skipped, False, processes, parity=True)


def evaluate_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    ignore_void: bool = False,
    processes: int | None = None,
    on_missing: str = "error",
    skip_first_last: bool = True,
) -> DavisScores:
    """Score predictions of any dataset laid out as ``<dir>/<seq>/<frame>.png``.

    Objects of a sequence are the union of the ids (other than 0 and void 255) found in its scored
    ground-truth and prediction frames, so ids may be non-contiguous, objects may appear late, and
    an id only in the predictions counts as an object (scoring 0 where it is predicted). Rows are
    named ``<seq>_<id>``. Sequences are the sub-folders of ``gt_dir`` that hold PNGs (or ``gt_dir``
    itself if it holds PNGs, then named ""); predictions for other sequences are ignored.

    Args:
        gt_dir: ground-truth folder.
        pred_dir: prediction folder with the same sequence and frame names.
        ignore_void: leave ground-truth void pixels out of J and F (as the official tool does in
            its unsupervised task) instead of counting them as background.
        processes, on_missing: as in :func:`evaluate_davis`.
        skip_first_last: do not score the first and the last frame (DAVIS semi-supervised protocol).

    Returns:
        Unrounded :class:`DavisScores` with ``parity=False``.
    """
    gt_root, pred_root = Path(gt_dir), _check_results_dir(Path(pred_dir))
    sequences = [
        (name or gt_root.name, files, pred_root / name if name else pred_root) for name, files in _folder_sequences(gt_root)
    ]
    jobs, skipped = _plan(sequences, False, skip_first_last, on_missing)
    return _evaluate(jobs, skipped, ignore_void, processes, parity=False)

