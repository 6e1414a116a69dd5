"""``extract``: fill the feature cache for a source or a DAVIS split (e.g. before a parameter sweep)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from vidprop.config import VidpropConfig
from vidprop.errors import ConfigError, InputError
from vidprop.pipeline.jobs import FeatureFiller, RunSummary, VideoJob, list_videos, run_jobs

if TYPE_CHECKING:
    from vidprop.pipeline.stream import VideoPipeline

__all__ = ["extract"]


def extract(
    source: str | os.PathLike | None = None,
    config: VidpropConfig | None = None,
    *,
    davis_root: str | os.PathLike | None = None,
    split: str = "val",
    sequences: Sequence[str] | None = None,
    resolution: str = "480p",
    pipeline: VideoPipeline | None = None,
) -> RunSummary:
    """Fill the feature cache (``features.cache.dir``) for a source or a DAVIS split; no masks are needed.

    Frames already cached are not recomputed, so an interrupted run resumes where it stopped.
    Shards, isolates failures and runs on ``runtime.engine`` like :func:`~vidprop.pipeline.jobs.run_videos`.

    Args:
        source: a video, a folder of frames, or a folder of videos (exclusive with ``davis_root``).
        davis_root: a DAVIS folder; the frames of its ``split`` sequences at ``resolution`` are extracted.

    Raises:
        ConfigError: ``features.cache.dir`` is not set.
        InputError: neither or both of ``source`` and ``davis_root``.
        SourceError, DavisLayoutError: bad input.
    """
    config = config if config is not None else VidpropConfig()
    if config.features.cache.dir is None:
        raise ConfigError("no cache folder set: extract fills the feature cache (--cache-dir DIR)", key="features.cache.dir")
    if (source is None) == (davis_root is None):
        raise InputError("give either a source or a DAVIS root to extract")
    if davis_root is not None:
        from vidprop.io.davis import DavisDataset
        from vidprop.pipeline.davis import davis_jobs

        dataset = DavisDataset(davis_root, split=split, resolution=resolution, annotations=False)
        jobs = davis_jobs(dataset, Path("."), sequences, masks=False)
    else:
        batch, videos = list_videos(source)
        roots = (("folder of videos", Path(source)),) if batch else ()
        jobs = [VideoJob(name, path, inputs=roots) for name, path in videos]
    return run_jobs(jobs, config, FeatureFiller, pipeline=pipeline)
