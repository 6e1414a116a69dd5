"""The DAVIS runner: every sequence of a split into the official results layout, then the scores.

The layout is read through :class:`~vidprop.io.davis.DavisDataset`, at one resolution for the
frames, the first masks and the ground truth; the videos run through the job runner
(:func:`~vidprop.pipeline.jobs.run_jobs`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vidprop.config import VidpropConfig, result_fingerprint
from vidprop.pipeline.jobs import RunSummary, VideoJob, is_finished, resolve_runtime, run_videos

if TYPE_CHECKING:
    from vidprop.pipeline.stream import VideoPipeline

__all__ = ["DavisRun", "REFERENCE_CONTEXT_CAPS", "davis_jobs", "run_davis", "score_davis"]

logger = logging.getLogger(__name__)

# DIFT's eval_davis.py caps the recent-frame window of these DAVIS sequences (to fit GPU memory);
# run_davis applies the same caps so that its scores are comparable with the paper's.
REFERENCE_CONTEXT_CAPS: dict[str, int] = {"shooting": 10}


@dataclasses.dataclass(frozen=True)
class DavisRun:
    """Result of :func:`run_davis`.

    Attributes:
        summary: outcomes of this process's sequences.
        sequences: every sequence of the run (all shards).
        pending: sequences not complete yet (other shards still running, or failed).
        scores: the scorer's :class:`~vidprop.scoring.DavisScores` (None until all are complete).
        reports: paths of the global and per-sequence CSVs (None until scored).
    """

    summary: RunSummary
    sequences: tuple[str, ...]
    pending: tuple[str, ...]
    scores: Any = None
    reports: tuple[Path, Path] | None = None


def davis_jobs(dataset: Any, out_dir: Path, sequences: Sequence[str] | None = None, masks: bool = True) -> list[VideoJob]:
    """One :class:`VideoJob` per DAVIS sequence, writing to ``out_dir/<seq>/``.

    Args:
        dataset: the split (:class:`~vidprop.io.davis.DavisDataset`).
        sequences: restrict to these sequences of the split.
        masks: find each sequence's first-frame annotation (False for feature extraction).

    Raises:
        DavisLayoutError: a requested sequence is not in the split, or a first annotation is missing.
    """
    jobs = []
    for seq in dataset.select(sequences):
        frames = dataset.frames(seq)
        jobs.append(
            VideoJob(
                name=seq,
                source=frames,
                mask=dataset.first_mask_path(seq, frames) if masks else None,
                out_dir=out_dir / seq,
                n_last_frames=REFERENCE_CONTEXT_CAPS.get(seq),
                inputs=(("DAVIS root", dataset.root),),
            )
        )
    return jobs


def run_davis(
    davis_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: VidpropConfig | None = None,
    split: str = "val",
    sequences: Sequence[str] | None = None,
    resolution: str = "480p",
    pipeline: VideoPipeline | None = None,
    score: bool = True,
) -> DavisRun:
    """Propagate every sequence of a DAVIS split into ``out_dir/<seq>/<frame>.png`` and score it.

    Writes ``out_dir/config.yaml`` and, once every sequence of the run is complete (whichever
    shard finishes last scores), the official CSVs (``global_results-<split>.csv``,
    ``per-sequence_results-<split>.csv``) via :func:`vidprop.scoring.write_reports`.

    Args:
        davis_root: DAVIS folder with JPEGImages/, Annotations/, ImageSets/.
        out_dir: results folder (the layout the official evaluation reads).
        config: run config (defaults: the paper's setting).
        split: ImageSets/2017/<split>.txt.
        sequences: restrict to these sequences (scored alone).
        resolution: ``"480p"`` or ``"Full-Resolution"``.
        pipeline: reuse an existing :class:`VideoPipeline` (its extractor).
        score: score when all sequences are complete.

    Raises:
        DavisLayoutError: bad DAVIS root, split or sequence name.
    """
    from vidprop.io.davis import DavisDataset

    config = resolve_runtime(config if config is not None else VidpropConfig())
    out_dir = Path(out_dir)
    dataset = DavisDataset(davis_root, split=split, resolution=resolution)
    jobs = davis_jobs(dataset, out_dir, sequences)
    for job in jobs:
        if job.n_last_frames is not None and job.n_last_frames < config.propagation.n_last_frames:
            logger.info("%s: recent-frame window capped at %d as in DIFT's evaluation", job.name, job.n_last_frames)
    summary = run_videos(jobs, config, pipeline=pipeline, config_dirs=[out_dir])
    fingerprint = result_fingerprint(config)
    pending = tuple(job.name for job in jobs if not is_finished(job, fingerprint))
    names = tuple(job.name for job in jobs)
    if pending or not score:
        if pending and summary.count("failed") == 0:
            logger.info(
                "scoring waits for %d sequence(s) of other shards (%s); the last shard to finish scores",
                len(pending), ", ".join(pending[:5]) + (" ..." if len(pending) > 5 else ""),
            )
        return DavisRun(summary, names, pending)
    scores = score_davis(davis_root, out_dir, config, split=split, sequences=names, resolution=resolution)
    from vidprop.scoring import write_reports

    reports = tuple(write_reports(scores, out_dir, split))
    return DavisRun(summary, names, (), scores, reports)  # type: ignore[arg-type]


def score_davis(
    davis_root: str | os.PathLike,
    results_dir: str | os.PathLike,
    config: VidpropConfig,
    split: str = "val",
    sequences: Sequence[str] | None = None,
    resolution: str = "480p",
) -> Any:
    """The scorer's :class:`~vidprop.scoring.DavisScores` of ``results_dir``, with ``config.scoring``.

    Args:
        sequences: score only these sequences of the split (None = all of it).
        resolution: the DAVIS resolution the masks were made at (their ground truth's).
    """
    from vidprop.scoring import evaluate_davis

    # One process unless asked: scoring the 934 sample frames takes ~4 s in-process, less than
    # starting a pool next to the loaded model.
    scoring = dataclasses.replace(config.scoring, processes=config.scoring.processes or 1)
    return evaluate_davis(davis_root, results_dir, split, sequences, config=scoring, resolution=resolution)
