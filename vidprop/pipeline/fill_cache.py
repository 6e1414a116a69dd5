"""Fill the feature cache ahead of propagation (e.g. before a parameter sweep)."""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from vidprop.config import VidpropConfig
from vidprop.engines import Task, failed_outcome, run_tasks
from vidprop.errors import ConfigError, InputError
from vidprop.io.frames import FrameSource, open_source
from vidprop.log import progress
from vidprop.pipeline.batch import RunSummary, VideoOutcome, list_videos, resolve_runtime, select_shard
from vidprop.pipeline.davis import davis_jobs
from vidprop.pipeline.video import VideoPipeline

__all__ = ["extract", "FeatureFiller"]

logger = logging.getLogger(__name__)


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
    """Fill the feature cache (``features.cache.dir``) for a source or a DAVIS split.

    Frames already cached are not recomputed, so an interrupted run resumes where it stopped.
    Shards like :func:`run_videos` and runs on ``runtime.engine`` like it.

    Args:
        source: a video, a folder of frames, or a folder of videos (exclusive with ``davis_root``).
        davis_root: a DAVIS folder; its ``split`` sequences are extracted.

    Raises:
        ConfigError: ``features.cache.dir`` is not set.
        SourceError, DavisLayoutError: bad input.
    """
    config = resolve_runtime(config if config is not None else VidpropConfig())
    if config.features.cache.dir is None:
        raise ConfigError("no cache folder set: extract fills the feature cache (--cache-dir DIR)", key="features.cache.dir")
    if (source is None) == (davis_root is None):
        raise InputError("give either a source or a DAVIS root to extract")
    if davis_root is not None:
        from vidprop.io.davis import DavisDataset

        dataset = DavisDataset(davis_root, split=split, resolution=resolution, annotations=False)
        videos = [(job.name, job.source) for job in davis_jobs(dataset, Path("."), sequences, masks=False)]
    else:
        videos = list_videos(source)[1]
    rt = config.runtime
    mine = select_shard(videos, rt.num_shards, rt.shard_index, key=lambda v: v[0])
    if pipeline is not None and rt.engine != "local":
        raise ConfigError(f"a pipeline object cannot be shipped to {rt.engine} workers: call without pipeline=", key="runtime.engine")
    outcomes: dict[str, VideoOutcome] = {}
    tasks = []
    for name, path in mine:
        try:
            frames = len(_open(path, config.data))
        except Exception as exc:  # noqa: BLE001 - reported per video, the others go on
            if rt.fail_fast:
                raise
            outcomes[name] = failed_outcome(name, exc)
            continue
        tasks.append(Task(name, (name, path), frames))
    outcomes.update(run_tasks(tasks, functools.partial(FeatureFiller, pipeline=pipeline), config).outcomes)
    return RunSummary(tuple(outcomes[name] for name, _ in mine))


def _open(source: Any, data_config: Any) -> FrameSource:
    return source if isinstance(source, FrameSource) else open_source(source, data_config)


class FeatureFiller:
    """The worker of :func:`extract` for every engine: ``FeatureFiller(config)((name, source))``.

    Picklable until first used (it holds only the config); the pipeline is built on first use.
    """

    def __init__(self, config: VidpropConfig, pipeline: VideoPipeline | None = None):
        self.config = config
        self.pipeline = pipeline

    def __call__(self, job: tuple[str, Any]) -> VideoOutcome:
        """Compute and cache the features of every frame of one video not cached yet; raises on failure."""
        name, source = job
        if self.pipeline is None:
            self.pipeline = VideoPipeline(self.config)
        start = time.perf_counter()
        frames = _open(source, self.config.data)
        count = 0
        stream = self.pipeline.frames_with_features(frames)
        for _ in progress(stream, total=len(frames), desc=name, unit="frame", leave=False):
            count += 1
        return VideoOutcome(name, "done", frames=count, seconds=time.perf_counter() - start)

    def close(self) -> None:
        """Log the feature cache's hits and misses."""
        if self.pipeline is not None:
            self.pipeline.log_cache_stats()

    def __getstate__(self) -> dict:
        if self.pipeline is not None:
            raise TypeError("a FeatureFiller holding a pipeline (a loaded model) cannot be sent to another process")
        return self.__dict__
