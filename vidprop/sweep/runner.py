"""Run a sweep with the least work: one feature pass per video and feature setting, feeding every propagation setting.

Plan: the points still to do are grouped by feature pass (everything but the ``propagation``
section and the feature backend's shared option, e.g. DIFT's up block) and, within a pass, by
feature setting. For each pass and video, one stream of the video's features
(:class:`~vidprop.features.stage.SharedFeatureStage`: one model pass per frame, each setting
through its own feature-cache entries) feeds one
:class:`~vidprop.pipeline.MaskPropagation` per point of the pass; points of one feature setting
that differ only in ``topk`` and ``temperature`` share each frame's ranked candidates
(:class:`~vidprop.propagation.SharedCandidates`). The model is loaded once for
all passes it can serve (DIFT: other timesteps, :meth:`~vidprop.features.stage.FeatureStage.reuse`)
and only when some feature is missing from the cache. Each point's masks go to
``<out>/points/<point>/<video>/<frame>.png`` with a completion marker per video. When a group's
videos are done its points are scored, ``result.json`` is written per point, and ``sweep.csv``
and ``best.yaml`` are rewritten. Plots come last.

Resume: a point with a valid ``result.json`` (same settings, same data) is not redone; a video
whose masks are complete for a point is not propagated again for it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from vidprop import __version__
from vidprop.config import dump_config, result_fingerprint
from vidprop.errors import ConfigError, VidpropError
from vidprop.io.atomic import clear_complete, mark_complete, remove_stale_temporaries
from vidprop.io.outputs import check_output_locations, prepare_output_folder
from vidprop.log import progress
from vidprop.sweep.grid import Grid, GridPoint
from vidprop.sweep.report import (
    BEST_FILE,
    CSV_FILE,
    PointResult,
    best_result,
    load_result,
    save_result,
    write_best,
    write_csv,
)

__all__ = ["SweepResult", "FeatureGroup", "plan_groups", "run_sweep", "POINTS_DIR"]

logger = logging.getLogger(__name__)

POINTS_DIR = "points"


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Outcome of :func:`run_sweep`.

    Attributes:
        results: every finished point's result, by grid index (all of them after a full run).
        best: the best point's result (None if nothing could be scored).
        csv, best_yaml: paths of ``sweep.csv`` and ``best.yaml``.
        plots: paths of the PNG plots written (empty without matplotlib).
        resumed: points taken from an earlier run.
    """

    results: dict[int, PointResult]
    best: PointResult | None
    csv: Path
    best_yaml: Path | None
    plots: tuple[Path, ...]
    resumed: int


@dataclasses.dataclass(frozen=True)
class FeatureGroup:
    """Grid points whose features one model pass gives (see :class:`~vidprop.features.stage.SharedFeatureStage`).

    Attributes:
        settings: the points of each distinct feature setting of the pass (grid order).
    """

    settings: tuple[tuple[GridPoint, ...], ...]

    @property
    def points(self) -> tuple[GridPoint, ...]:
        return tuple(sorted((p for s in self.settings for p in s), key=lambda p: p.index))


def plan_groups(points: Sequence[GridPoint]) -> list[FeatureGroup]:
    """Group ``points`` into feature passes, then by feature setting, in grid order of first appearance."""
    from vidprop.features.stage import shared_pass_key
    from vidprop.propagation import PropagationConfig

    passes: dict[str, dict[str, list[GridPoint]]] = {}
    for point in points:
        config = point.config.replace(propagation=PropagationConfig())
        pass_key = result_fingerprint(config.replace(features=shared_pass_key(config.features)))
        setting_key = result_fingerprint(point.config.replace(propagation=PropagationConfig()))
        passes.setdefault(pass_key, {}).setdefault(setting_key, []).append(point)
    return [FeatureGroup(tuple(tuple(members) for members in settings.values())) for settings in passes.values()]


class _Clock:
    """Seconds charged to each point: its own work plus an even share of the passes it took part in."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}

    def charge(self, points: Sequence[GridPoint], seconds: float) -> None:
        for point in points:
            self.seconds[point.index] = self.seconds.get(point.index, 0.0) + seconds / max(len(points), 1)


def _point_dir(out_dir: Path, grid: Grid, point: GridPoint) -> Path:
    return out_dir / POINTS_DIR / point.name(grid.axes)


def _job(video: Any, folder: Path | None = None) -> Any:
    """``video`` as a :class:`~vidprop.pipeline.VideoJob`, whose resume rules a sweep shares."""
    from vidprop.pipeline import VideoJob

    return VideoJob(video.name, video.source, video.mask, out_dir=folder)


def _marker(point: GridPoint, video: Any, frames: int) -> dict:
    """What a finished video of a point records: its settings and its inputs' identity."""
    from vidprop.pipeline import completion_record

    return {**completion_record(_job(video), point.fingerprint), "frames": frames, "vidprop_version": __version__}


def _video_done(folder: Path, point: GridPoint, video: Any) -> bool:
    """Whether ``folder`` holds ``video``'s complete masks for ``point`` (same settings, frames and mask
    content; see :func:`~vidprop.pipeline.is_finished`)."""
    from vidprop.pipeline import is_finished

    return is_finished(_job(video, folder), point.fingerprint)


def _run_pass(shared: Any, video: Any, todo: list[tuple[GridPoint, Path, int]], clock: _Clock) -> None:
    """One pass over ``video``'s features, feeding one propagator per ``(point, folder, setting)`` of ``todo``."""
    from vidprop.io.masks import read_mask, write_mask
    from vidprop.io.prefetch import prefetch
    from vidprop.pipeline import MaskPropagation, VideoPipeline
    from vidprop.pipeline.jobs import remove_earlier_outputs
    from vidprop.propagation import SharedCandidates

    source = video.source
    label_mask = read_mask(video.mask, expected_size=source.size)
    propagators, rankings = [], []
    # settings of one feature setting that differ only in topk and temperature rank each frame's candidates once
    candidates: dict[tuple, SharedCandidates] = {}
    members: dict[int, list[GridPoint]] = {}
    for point, folder, setting in todo:
        folder.mkdir(parents=True, exist_ok=True)
        remove_earlier_outputs(folder, source.names, point.config.runtime)
        clear_complete(folder)
        remove_stale_temporaries(folder)  # what a killed sweep left in this folder
        config = VideoPipeline(point.config).propagation_config(video.n_last_frames)
        ranking = candidates.setdefault((setting, dataclasses.replace(config, topk=1, temperature=1.0)), SharedCandidates())
        members.setdefault(id(ranking), []).append(point)
        propagators.append(MaskPropagation(label_mask, config, ranking))
        rankings.append(ranking)
    points = [p for p, _, _ in todo]
    data = points[0].config.data
    frames = prefetch(source, data.resize_policy(), depth=data.prefetch)
    stream = shared.stream(frames)
    bar = progress(None, total=len(source), desc=f"{video.name} x {len(todo)}", unit="frame", leave=False, position=1)
    count = 0
    try:
        while True:
            start = time.perf_counter()
            try:
                frame, per_setting = next(stream)
            except StopIteration:
                break
            clock.charge(points, time.perf_counter() - start)
            for (point, folder, setting), propagator, ranking in zip(todo, propagators, rankings):
                start, ranked = time.perf_counter(), ranking.seconds
                out = propagator.step(frame, per_setting[setting])
                write_mask(folder / f"{frame.name}.png", out.mask, palette=label_mask.palette)
                shared_seconds = ranking.seconds - ranked  # a ranking made for the whole group
                clock.charge([point], time.perf_counter() - start - shared_seconds)
                clock.charge(members[id(ranking)], shared_seconds)
            del per_setting
            count += 1
            bar.update(1)
    finally:
        stream.close()
        frames.close()
        bar.close()
    if count != len(source):
        raise VidpropError(f"{video.name}: read {count} of {len(source)} frames")
    logger.debug("%s: candidates ranked %d times, served again %d times", video.name,
                 sum(c.computed for c in candidates.values()), sum(c.reused for c in candidates.values()))
    for point, folder, _ in todo:
        mark_complete(folder, _marker(point, video, count))


def _cache_dirs(grid: Grid) -> list[Path]:
    """The feature cache folders of the grid's points."""
    return [Path(d) for d in sorted({p.config.features.cache.dir for p in grid.points} - {None})]


def _check_locations(grid: Grid, data: Any, out_dir: Path) -> None:
    """Refuse a sweep folder or feature cache that is, lies inside, or contains an input."""
    from vidprop.pipeline import job_inputs

    inputs = [*data.inputs, *(pair for video in data.videos for pair in job_inputs(_job(video)))]
    outputs = [("sweep folder", out_dir)]
    outputs += [("feature cache", d) for d in _cache_dirs(grid)]
    check_output_locations(outputs, inputs)


def run_sweep(grid: Grid, data: Any, out_dir: str | Path, overwrite: bool = False) -> SweepResult:
    """Run every point of ``grid`` on ``data`` into ``out_dir``, resumably; see the module docstring.

    Args:
        grid: the validated grid (:func:`~vidprop.sweep.build_grid`).
        data: a :class:`~vidprop.sweep.data.DavisSweepData` or :class:`~vidprop.sweep.data.FolderSweepData`.
        out_dir: the sweep's folder (``sweep.csv``, ``best.yaml``, plots, ``points/``).
        overwrite: redo every point, ignoring earlier results and masks.

    Returns:
        The :class:`SweepResult`.

    Raises:
        ConfigError: a sharded run (``runtime.num_shards > 1``), which a sweep does not support.
        InputError and others: from the stages (bad frames, missing model, ...), at the first failure.
    """
    from vidprop.pipeline import resolve_runtime
    from vidprop.features.stage import SharedFeatureStage

    if resolve_runtime(grid.base).runtime.num_shards > 1:
        raise ConfigError("a sweep runs in one process: sharding is not supported", key="runtime.num_shards")
    out_dir = Path(out_dir)
    _check_locations(grid, data, out_dir)
    prepare_output_folder(out_dir, "sweep folder")
    for cache_dir in _cache_dirs(grid):
        prepare_output_folder(cache_dir, "feature cache")
    signature = data.signature
    sequences = [v.name for v in data.videos]
    results: dict[int, PointResult] = {}
    if not overwrite:
        for point in grid.points:
            found = load_result(_point_dir(out_dir, grid, point), point, signature)
            if found is not None:
                results[point.index] = found
    resumed = len(results)
    if resumed:
        logger.info("%d of %d grid points already done (resumed); %d to run", resumed, len(grid.points), len(grid.points) - resumed)
    csv_path, best_path = out_dir / CSV_FILE, out_dir / BEST_FILE
    write_csv(csv_path, grid, results, sequences)
    todo = [p for p in grid.points if p.index not in results]
    groups = plan_groups(todo)
    logger.info(
        "%d grid points to run in %d feature pass(es) over %d video(s)", len(todo), len(groups), len(data.videos)
    )
    # described before any compute: a setting the backend rejects (an up block the UNet lacks) stops here
    stages = [
        SharedFeatureStage(
            [members[0].config.features for members in group.settings],
            group.settings[0][0].config.runtime.device,
            group.settings[0][0].config.runtime.dtype,
            tf32=group.settings[0][0].config.runtime.tf32,
            compile=group.settings[0][0].config.runtime.compile,
        )
        for group in groups
    ]
    clock = _Clock()
    bar = progress(None, total=len(grid.points), initial=resumed, desc="grid points", unit="point", position=0)
    reusable = None  # the last pass's extractor: its loaded model serves the next pass when it can (another t)
    try:
        for group in groups:
            shared = stages.pop(0)  # dropped after its pass: one model in memory at a time
            shared.reuse(reusable)
            reusable = None
            for point in group.points:
                dump_config(point.config, _point_dir(out_dir, grid, point) / "config.yaml")
            for video in data.videos:
                pending = [
                    (point, _point_dir(out_dir, grid, point) / video.name, setting)
                    for setting, members in enumerate(group.settings)
                    for point in members
                    if overwrite or not _video_done(_point_dir(out_dir, grid, point) / video.name, point, video)
                ]
                if pending:
                    _run_pass(shared, video, pending, clock)
            shared.log_stats()
            reusable = shared.handover()
            del shared
            for point in group.points:
                start = time.perf_counter()
                folder = _point_dir(out_dir, grid, point)
                scores = data.score(folder, point.config)
                clock.charge([point], time.perf_counter() - start)
                result = PointResult.from_scores(point.index, scores, clock.seconds.get(point.index, 0.0))
                save_result(folder, point, signature, result)
                results[point.index] = result
                write_csv(csv_path, grid, results, sequences)
                write_best(best_path, grid, results, data.describe())
                bar.update(1)
    finally:
        bar.close()
    best_yaml = write_best(best_path, grid, results, data.describe())
    from vidprop.sweep.plots import write_plots

    plots = write_plots(grid, results, out_dir)
    return SweepResult(results, best_result(results), csv_path, best_yaml, tuple(plots), resumed)
