"""Execution engines: who runs the videos of a batch, and where.

An engine takes :class:`Task` s (one video each) and a *worker factory*, and returns one outcome
per video. The worker factory is a picklable callable ``make_worker(config) -> worker`` (see
:class:`Worker`): ``worker(job) -> VideoOutcome`` runs one video end to end (read, propagate,
write, mark complete) in the calling process and may raise. A worker is built once per process,
so the model loads once per process. The engines differ only in where the worker runs:

- ``local`` (:func:`run_local`): in this process, one video after another, in job order.
- ``ray`` (:func:`vidprop.engines.ray_engine.run_ray`): a pool of Ray actors fed longest video
  first, replacing dead actors and retrying their video (``pip install 'vidprop[ray]'``).

Static sharding (``--num-shards``, torchrun, Slurm arrays) happens before the engine: each
process hands its own shard to the ``local`` engine.

Importing this package loads neither torch nor Ray.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path
from typing import Any, Protocol, Sequence

from vidprop.engines.config import ENGINE_NAMES, RayConfig

__all__ = ["ENGINES", "ENGINE_NAMES", "RayConfig", "Task", "EngineResult", "Worker", "WorkerFactory", "failed_outcome", "run_tasks", "run_local"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Task:
    """One video for an engine.

    Attributes:
        name: the video's name (unique within a run; logs and outcomes use it).
        job: what ``run_one`` receives. It crosses process boundaries under Ray, so it must be
            small and picklable: paths and names, never frames or features.
        frames: the video's length in frames (the Ray engine dispatches longest first).
        out_dirs: folders that only this video writes (its masks, its overlay frames). A worker
            killed mid-write leaves temporaries there; the Ray engine removes them.
    """

    name: str
    job: Any
    frames: int = 0
    out_dirs: tuple[Path, ...] = ()


@dataclasses.dataclass(frozen=True)
class EngineResult:
    """What an engine did.

    Attributes:
        outcomes: ``name -> VideoOutcome`` of every task.
        dispatched: task names in the order they were handed to workers (a retried video
            appears once per try).
    """

    outcomes: dict[str, Any]
    dispatched: tuple[str, ...] = ()

    def tries(self, name: str) -> int:
        """How many times video ``name`` was handed to a worker."""
        return self.dispatched.count(name)


class Worker(Protocol):
    """Runs videos in one process; holds what is worth keeping between them (the model)."""

    def __call__(self, job: Any) -> Any:
        """Run one video end to end; return its ``VideoOutcome`` or raise."""

    def close(self) -> None:
        """Called once after the last video (e.g. to log feature-cache statistics)."""


class WorkerFactory(Protocol):
    """``make_worker(config) -> Worker``; picklable (a module-level class, or a partial of one)."""

    def __call__(self, config: Any) -> Worker: ...


def failed_outcome(name: str, exc: BaseException) -> Any:
    """The failed ``VideoOutcome`` of video ``name`` that raised ``exc``, logged.

    Exit code: ``exc.exit_code`` for a :class:`~vidprop.errors.VidpropError` (2 = bad input),
    else 1 (an internal error, logged with its traceback).
    """
    from vidprop.errors import VidpropError
    from vidprop.pipeline.jobs import VideoOutcome

    if isinstance(exc, VidpropError):
        logger.error("%s failed: %s", name, exc)
        code = exc.exit_code
    else:
        logger.error("%s failed with an internal error", name, exc_info=exc)
        code = 1
    return VideoOutcome(name, "failed", error=str(exc) or type(exc).__name__, exit_code=code)


def run_local(tasks: Sequence[Task], make_worker: WorkerFactory, config: Any) -> EngineResult:
    """Run every task in this process, in order, with one worker.

    A failing video is reported (:func:`failed_outcome`) and the others go on, unless
    ``config.runtime.fail_fast``: then its exception propagates. A missing model
    (:class:`~vidprop.errors.ModelNotFoundError`) stops the run: every video would fail alike.
    """
    from vidprop.errors import ModelNotFoundError
    from vidprop.log import progress

    outcomes: dict[str, Any] = {}
    if not tasks:
        return EngineResult(outcomes)
    worker = make_worker(config)
    try:
        for task in progress(tasks, desc="videos", unit="video"):
            try:
                outcomes[task.name] = worker(task.job)
            except ModelNotFoundError:
                raise  # the same for every video: stop the run with one message
            except Exception as exc:  # noqa: BLE001 - one bad video must not stop the batch
                if config.runtime.fail_fast:
                    raise
                outcomes[task.name] = failed_outcome(task.name, exc)
    finally:
        worker.close()
    return EngineResult(outcomes, tuple(t.name for t in tasks))


# Registry: runtime.engine -> "module:function" (imported on use: Ray loads only when chosen).
ENGINES: dict[str, str] = {
    "local": "vidprop.engines:run_local",
    "ray": "vidprop.engines.ray_engine:run_ray",
}


def run_tasks(tasks: Sequence[Task], make_worker: WorkerFactory, config: Any) -> EngineResult:
    """Run ``tasks`` on the engine named by ``config.runtime.engine``."""
    module, _, function = ENGINES[config.runtime.engine].partition(":")
    engine = getattr(importlib.import_module(module), function)
    return engine(tasks, make_worker, config)
