"""The Ray engine: a pool of Ray actors, one pipeline each, fed one video at a time, longest first.

The driver (this process) keeps the queue; Ray only runs the actors. Why not Ray Data: its video
reader yields one row per frame (regrouping them into videos needs a shuffle), and with one row
per video it batches many videos per block and retries a crashing video without end. Why not
``ray.util.ActorPool``: it does not resubmit the item of a dead actor.

- **Longest first.** Videos are dispatched by decreasing frame count (ties in job order), so the
  long ones do not start last and leave the other workers idle at the end.
- **Dead actors.** An actor whose process or node dies (a crash, ``kill -9``, Ray's
  out-of-memory killer, a lost node) is replaced from the driver, the temporaries it left are
  removed and its video goes back to the head of the queue, up to ``runtime.ray.max_tries``
  tries. Actors are created with ``max_restarts=0``: with Ray's own restarts, calls to a
  restarting actor fail at once instead of waiting.
- **Errors are not retried.** An exception raised by the video itself (bad input: exit code 2;
  anything else: 1) is reported as that video's failure, as in a local run.
- **No state but the files.** Each actor reads its video and writes its masks itself; nothing
  but the job (paths, names) and the outcome passes through Ray's object store. The completion
  markers are the only record of progress: killing the driver and running again resumes.
- **Resources.** Every actor declares ``num_cpus`` (and runs that many torch/OpenMP threads;
  Ray would give it ``OMP_NUM_THREADS=1`` otherwise), ``num_gpus`` (an actor without GPUs gets
  ``CUDA_VISIBLE_DEVICES=""`` and the CPU device; one with GPUs uses the first GPU Ray made
  visible to it) and ``memory`` (so Ray places no more actors on a node than fit).
- **A light driver.** The driver imports neither torch nor a video reader's decoder: it plans
  the queue from folder listings and video headers (:func:`~vidprop.pipeline.jobs.job_length`),
  and each video is opened and checked once, by the actor that runs it. The actors set their
  own environment (threads, visible GPUs) before torch loads, without a ``runtime_env`` (which
  would go through Ray's runtime-env agent and a dedicated worker start), and a local Ray
  instance starts no idle workers ahead of them.

Test hook: ``VIDPROP_TEST_KILL_WORKER=<video>:<n>`` in the driver's environment makes the actor
running ``<video>`` kill itself (SIGKILL) once ``n`` masks of it exist, on its first try only.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from vidprop.engines import EngineResult, Task, WorkerFactory, failed_outcome
from vidprop.errors import ConfigError, InputError, VidpropError

__all__ = ["WorkerPlan", "plan_workers", "run_ray", "start_local_ray", "VideoActor", "FAULT_ENV"]

logger = logging.getLogger(__name__)

FAULT_ENV = "VIDPROP_TEST_KILL_WORKER"
GIB = 1024**3
_MIB = 1024**2
_STATUS_EVERY_S = 60.0  # per-actor status line in the log
_WAIT_S = 1.0  # driver wake-ups: progress bar, status, Ctrl-C


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    """Resources of each actor and how many there are.

    Attributes:
        workers: number of actors.
        cpus: ``num_cpus`` per actor (also its torch and OpenMP thread count).
        gpus: ``num_gpus`` per actor (0 = CPU only).
        memory: ``memory`` per actor, in bytes.
        device: the torch device each actor runs on (``"cuda"`` = the GPU Ray assigned).
    """

    workers: int
    cpus: int
    gpus: float
    memory: int
    device: str

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.workers} worker(s), each {self.cpus} CPU{gpus}, {self.memory / GIB:.1f} GiB, device {self.device}"


def _capacity(node: dict[str, float], cpus: int, gpus: float, memory: float = 0.0) -> int:
    """How many actors of these resources one node can hold."""
    counts = [node.get("CPU", 0.0) // cpus]
    if gpus:
        counts.append(node.get("GPU", 0.0) // gpus)
    if memory:
        counts.append(node.get("memory", 0.0) // memory)
    return int(min(counts))


def plan_workers(ray_config: Any, device: str, nodes: Sequence[dict[str, float]]) -> WorkerPlan:
    """Actor count and resources from ``runtime.ray`` and the resources of the cluster's nodes.

    Defaults: GPUs per actor 1 when the cluster has GPUs; one actor per GPU; CPUs per actor a
    GPU's share of its node's CPUs (without GPUs: the cluster's CPUs divided by the actors, at
    most one node's); memory per actor the share of the node that holds the most actors for
    its memory, so that memory never keeps an actor from a node that has CPUs and GPUs for it.

    Args:
        ray_config: a :class:`~vidprop.engines.config.RayConfig`.
        device: ``runtime.device`` ("auto", "cpu", "cuda", "cuda:N", "mps").
        nodes: each alive node's total resources ("CPU", "GPU", "memory" in bytes), as in
            ``ray.nodes()[i]["Resources"]``.

    Raises:
        ConfigError: a device that contradicts the GPU request, or an actor that fits no node.
    """
    cluster = {key: sum(float(n.get(key, 0.0)) for n in nodes) for key in ("CPU", "GPU", "memory")}
    if device.startswith("cuda:"):
        raise ConfigError(
            f"{device!r}: with the Ray engine each actor uses the GPU that Ray assigns to it (use 'auto' or 'cuda')",
            key="runtime.device",
        )
    gpus = ray_config.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster["GPU"] >= 1 and device in ("auto", "cuda") else 0.0
    if gpus > 0 and device not in ("auto", "cuda"):
        raise ConfigError(f"{gpus:g} GPU(s) per worker requested but runtime.device is {device!r}", key="runtime.ray.gpus_per_worker")
    if gpus == 0 and device == "cuda":
        raise ConfigError("runtime.device is 'cuda' but the workers get no GPU (give --gpus-per-worker 1)", key="runtime.ray.gpus_per_worker")
    gpu_nodes = [n for n in nodes if gpus and n.get("GPU", 0.0) >= gpus]
    if gpus and not gpu_nodes:
        raise ConfigError(
            f"each worker asks for {gpus:g} GPU(s) but no node of the Ray cluster has that many "
            f"(the cluster has {cluster['GPU']:g})",
            key="runtime.ray.gpus_per_worker",
        )
    workers = ray_config.workers or (sum(int(n["GPU"] // gpus) for n in gpu_nodes) if gpus else 1)
    cpus = ray_config.cpus_per_worker
    if not cpus and gpus:
        cpus = min(int(n.get("CPU", 0.0) // (n["GPU"] // gpus)) for n in gpu_nodes)
    elif not cpus:
        cpus = min(int(cluster["CPU"] // workers), int(max(n.get("CPU", 0.0) for n in nodes)))
    cpus = max(1, cpus)
    hosts = [n for n in nodes if _capacity(n, cpus, gpus) > 0]
    if not hosts:
        raise ConfigError(
            f"no node of the Ray cluster has {cpus} CPUs" + (f" and {gpus:g} GPU(s)" if gpus else "") + " for a worker",
            key="runtime.ray.cpus_per_worker",
        )
    if ray_config.memory_per_worker_gb:
        memory = int(ray_config.memory_per_worker_gb * GIB)
    else:
        memory = int(min(n.get("memory", 0.0) / min(workers, _capacity(n, cpus, gpus)) for n in hosts)) // _MIB * _MIB
    if memory <= 0 or not any(_capacity(n, cpus, gpus, memory) for n in hosts):
        largest = max(n.get("memory", 0.0) for n in hosts)
        raise ConfigError(
            f"each worker asks for {memory / GIB:.2f} GiB but the largest memory resource of a node that can host it is "
            f"{largest / GIB:.2f} GiB",
            key="runtime.ray.memory_per_worker_gb",
        )
    fit = sum(_capacity(n, cpus, gpus, memory) for n in nodes)
    if fit < workers:
        logger.warning(
            "only %d of %d workers fit into the Ray cluster now (%g CPUs, %g GPUs, %.1f GiB in %d node(s)); "
            "the others start when resources free up",
            fit, workers, cluster["CPU"], cluster["GPU"], cluster["memory"] / GIB, len(nodes),
        )
    worker_device = "cuda" if gpus > 0 else ("cpu" if device == "auto" else device)
    return WorkerPlan(workers=workers, cpus=cpus, gpus=float(gpus), memory=memory, device=worker_device)


def _alive_nodes(ray: Any) -> list[dict[str, float]]:
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def _parse_fault(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    name, sep, count = text.rpartition(":")
    if not sep or not name or not count.isdigit():
        raise ConfigError(f"{FAULT_ENV}={text!r}: expected <video>:<number of masks>")
    return name, int(count)


def _kill_self_after(folder: Path, masks: int) -> None:
    """Test hook: SIGKILL this process once ``folder`` holds ``masks`` finished PNGs."""

    def watch() -> None:
        while True:
            try:
                done = sum(1 for p in folder.glob("*.png") if not p.name.startswith("."))
            except OSError:
                done = 0
            if done >= masks:
                logger.warning("%s: killing this worker after %d masks (%s)", folder.name, done, FAULT_ENV)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.02)

    threading.Thread(target=watch, name="vidprop-test-kill", daemon=True).start()


class VideoActor:
    """One Ray actor: one worker (so one loaded model) and one video at a time.

    Args:
        make_worker: the worker factory; called once here with ``config``.
        config: the run's config with the device this actor uses.
        threads: torch intra-op threads (the actor's ``num_cpus``).
        log_level: the driver's vidprop log level (actor logs are forwarded to the driver).
        fault: the test hook's ``(video, masks)``, or None.
        env: environment variables set before torch loads (thread counts, visible GPUs).
    """

    def __init__(
        self, make_worker: WorkerFactory, config: Any, threads: int, log_level: int, fault: tuple[str, int] | None, env: dict[str, str]
    ):
        # Before torch (and OpenMP) load in this process; a runtime_env would do the same through Ray's
        # runtime-env agent, at the cost of a dedicated worker process start per actor.
        os.environ.update(env)
        import torch

        from vidprop.log import set_progress_enabled, set_verbosity

        torch.set_num_threads(threads)
        set_verbosity(log_level)
        set_progress_enabled(False)
        self._worker = make_worker(config)
        self._fault = fault

    def ready(self) -> dict[str, Any]:
        """Where this actor runs: pid, node, GPU ids, torch threads."""
        import ray
        import torch

        from vidprop.io.atomic import HOST_TAG

        return {
            "host_tag": HOST_TAG,
            "pid": os.getpid(),
            "node": ray.util.get_node_ip_address(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "threads": torch.get_num_threads(),
        }

    def run(self, task: Task, attempt: int) -> Any:
        """Run one video; every exception it raises becomes its failed outcome."""
        if self._fault is not None and attempt == 1 and self._fault[0] == task.name and task.out_dirs:
            _kill_self_after(task.out_dirs[0], self._fault[1])
        try:
            return self._worker(task.job)
        except Exception as exc:  # noqa: BLE001 - reported to the driver as this video's failure
            return failed_outcome(task.name, exc)

    def close(self) -> None:
        """The worker's :meth:`~vidprop.engines.Worker.close` (before the driver kills this actor)."""
        self._worker.close()


@dataclasses.dataclass
class _Slot:
    """The driver's view of one actor."""

    id: int
    actor: Any
    ready_ref: Any = None  # pending until the actor has started
    info: dict | None = None
    task: Task | None = None
    ref: Any = None
    attempt: int = 0
    since: float = 0.0

    def label(self) -> str:
        if self.info is None:
            return f"worker {self.id}"
        gpus = f", GPU {','.join(self.info['gpus'])}" if self.info["gpus"] else ""
        return f"worker {self.id} (pid {self.info['pid']} on {self.info['node']}{gpus})"


def _lost_worker_errors(ray: Any) -> tuple[type, ...]:
    """Ray's errors for a call whose actor, process or node is gone (retried), as opposed to errors of the call."""
    e = ray.exceptions
    return (e.RayActorError, e.WorkerCrashedError, e.ObjectLostError, e.OutOfMemoryError, e.NodeDiedError)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


class _Driver:
    """The queue, the actor pool, retries and progress of one :func:`run_ray` call."""

    def __init__(self, ray: Any, tasks: Sequence[Task], make_worker: WorkerFactory, config: Any, plan: WorkerPlan):
        self.ray = ray
        self.config = config
        self.plan = plan
        self.max_tries = config.runtime.ray.max_tries
        self.fail_fast = config.runtime.fail_fast
        # longest first; sorted() is stable, so equal lengths keep the job order
        self.queue = collections.deque(sorted(tasks, key=lambda t: -t.frames))
        self.total = len(tasks)
        self.outcomes: dict[str, Any] = {}
        self.dispatched: list[str] = []
        self.failed = 0
        self.start_failures = 0
        self.next_id = 0
        self.slots: list[_Slot] = []
        worker_config = config.replace(runtime=dataclasses.replace(config.runtime, device=plan.device))
        threads = str(plan.cpus)
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if plan.gpus == 0:
            env["CUDA_VISIBLE_DEVICES"] = ""  # an actor without num_gpus would otherwise see every GPU
        self.actor_class = ray.remote(VideoActor).options(
            num_cpus=plan.cpus,
            num_gpus=plan.gpus,
            memory=plan.memory,
            max_restarts=0,
            max_task_retries=0,
        )
        self.actor_args = (
            make_worker,
            worker_config,
            plan.cpus,
            logging.getLogger("vidprop").getEffectiveLevel(),
            _parse_fault(os.environ.get(FAULT_ENV)),
            env,
        )

    # -- actors -------------------------------------------------------------------------------

    def _spawn(self) -> _Slot:
        actor = self.actor_class.remote(*self.actor_args)
        slot = _Slot(id=self.next_id, actor=actor, ready_ref=actor.ready.remote())
        self.next_id += 1
        return slot

    def _replace(self, slot: _Slot) -> None:
        self.ray.kill(slot.actor, no_restart=True)
        self.slots[self.slots.index(slot)] = self._spawn()

    def _kill_all(self) -> None:
        closing = [slot.actor.close.remote() for slot in self.slots if slot.info is not None and slot.task is None]
        try:
            self.ray.get(closing, timeout=30)
        except Exception as exc:  # noqa: BLE001 - closing only logs statistics
            logger.debug("closing the workers: %s", _short(exc))
        for slot in self.slots:
            try:
                self.ray.kill(slot.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> EngineResult:
        from vidprop.log import progress

        order = ", ".join(f"{t.name} ({t.frames})" for t in list(self.queue)[:8]) + (" ..." if len(self.queue) > 8 else "")
        logger.info("Ray engine: %d video(s) on %s; longest first: %s", self.total, self.plan.describe(), order)
        logger.debug("dispatch order: %s", ", ".join(f"{t.name} ({t.frames})" for t in self.queue))
        self.slots = [self._spawn() for _ in range(self.plan.workers)]
        self.bar = progress(None, total=self.total, desc="videos", unit="video")
        last_status = time.monotonic()
        try:
            while self.queue or any(s.task is not None for s in self.slots):
                self._dispatch()
                waiting = {s.ready_ref: (s, self._started) for s in self.slots if s.ready_ref is not None}
                waiting.update({s.ref: (s, self._finished) for s in self.slots if s.ref is not None})
                done, _ = self.ray.wait(list(waiting), num_returns=1, timeout=_WAIT_S)
                for ref in done:
                    slot, handle = waiting[ref]
                    handle(slot)
                self._show()
                if time.monotonic() - last_status >= _STATUS_EVERY_S:
                    self._log_status()
                    last_status = time.monotonic()
        finally:
            self.bar.close()
            self._kill_all()
        return EngineResult(self.outcomes, tuple(self.dispatched))

    def _dispatch(self) -> None:
        for slot in self.slots:
            if not self.queue:
                return
            if slot.info is None or slot.task is not None:
                continue
            task = self.queue.popleft()
            attempt = self.dispatched.count(task.name) + 1
            try:
                slot.ref = slot.actor.run.remote(task, attempt)
            except Exception as exc:  # noqa: BLE001 - Ray could not serialise the job
                raise InputError(f"{task.name}: its job cannot be sent to a Ray worker ({_short(exc)}); give sources as paths") from exc
            slot.task, slot.attempt, slot.since = task, attempt, time.monotonic()
            self.dispatched.append(task.name)
            logger.info("%s: %s started (%d frames, try %d of %d)", slot.label(), task.name, task.frames, attempt, self.max_tries)

    def _started(self, slot: _Slot) -> None:
        ref, slot.ready_ref = slot.ready_ref, None
        try:
            slot.info = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            self.start_failures += 1
            logger.warning("worker %d died while starting (%d so far): %s", slot.id, self.start_failures, _short(exc))
            if self.start_failures >= self.plan.workers * self.max_tries:
                raise VidpropError(f"Ray workers keep dying while starting ({self.start_failures} times); last error: {_short(exc)}") from None
            self._replace(slot)
            return
        logger.info("%s ready: device %s, %d torch thread(s)", slot.label(), self.plan.device, slot.info["threads"])

    def _finished(self, slot: _Slot) -> None:
        task, ref, attempt = slot.task, slot.ref, slot.attempt
        seconds = time.monotonic() - slot.since
        slot.task = slot.ref = None
        try:
            outcome = self.ray.get(ref)
        except _lost_worker_errors(self.ray) as exc:
            self._died(slot, task, attempt, exc)
            return
        except self.ray.exceptions.RayError as exc:  # not the video's own exception (the actor catches those)
            outcome = failed_outcome(task.name, exc)
        self.outcomes[task.name] = outcome
        self.bar.update(1)
        if outcome.status == "failed":
            self.failed += 1
            logger.info("%s: %s failed (not retried: the error is the video's own)", slot.label(), task.name)
            if self.fail_fast:
                raise (InputError if outcome.exit_code == 2 else VidpropError)(outcome.error)
        else:
            logger.info("%s: %s %s (%d frames, %.1f s)", slot.label(), task.name, outcome.status, outcome.frames, seconds)

    def _died(self, slot: _Slot, task: Task, attempt: int, exc: BaseException) -> None:
        from vidprop.io.atomic import remove_stale_temporaries

        label = slot.label()
        self._replace(slot)  # kill it for sure before touching its folders
        dead = {(slot.info["host_tag"], slot.info["pid"])} if slot.info else set()
        for folder in task.out_dirs:
            remove_stale_temporaries(folder, dead=dead)
        if attempt < self.max_tries:
            self.queue.appendleft(task)
            logger.warning(
                "%s died while running %s (try %d of %d): %s; %s goes back to the head of the queue",
                label, task.name, attempt, self.max_tries, _short(exc), task.name,
            )
            return
        message = f"its worker died {attempt} times (last: {_short(exc)})"
        logger.error("%s died while running %s (try %d of %d): giving up on it", label, task.name, attempt, self.max_tries)
        self.outcomes[task.name] = failed_outcome(task.name, VidpropError(message))
        self.failed += 1
        self.bar.update(1)
        if self.fail_fast:
            raise VidpropError(f"{task.name}: {message}")

    def _show(self) -> None:
        running = sum(s.task is not None for s in self.slots)
        done = len(self.outcomes) - self.failed
        self.bar.set_postfix_str(f"done {done}, running {running}, failed {self.failed}", refresh=False)

    def _log_status(self) -> None:
        now = time.monotonic()
        parts = []
        for slot in self.slots:
            if slot.info is None:
                parts.append(f"worker {slot.id}: starting")
            elif slot.task is None:
                parts.append(f"worker {slot.id}: idle")
            else:
                parts.append(f"worker {slot.id}: {slot.task.name} ({now - slot.since:.0f} s)")
        logger.info("%d of %d videos finished, %d queued; %s", len(self.outcomes), self.total, len(self.queue), "; ".join(parts))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray engine needs Ray: pip install 'vidprop[ray]'", key="runtime.engine") from None
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join ``address`` or start a local Ray instance; True when this call started Ray."""
    if ray.is_initialized():
        if address:
            logger.info("Ray is already initialised in this process; using it (runtime.ray.address %r not used)", address)
        return False
    if not address:
        start_local_ray()
        return True
    try:
        ray.init(address=address, **_INIT_OPTIONS)
    except ConnectionError as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at {address!r} ({_short(exc)})", key="runtime.ray.address") from None
    return True


_INIT_OPTIONS: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)


def start_local_ray(num_cpus: int | None = None) -> None:
    """Start the local Ray instance of a run without ``runtime.ray.address`` in this process.

    No dashboard, an object store of 128 MiB (nothing big goes through it: jobs and outcomes
    only), and no idle workers started ahead (see ``_LOCAL_RAY_ENV``). Stop it with
    ``ray.shutdown()``.

    Args:
        num_cpus: CPUs the instance offers (None = all of this machine's).

    Raises:
        ConfigError: Ray is not installed.
    """
    ray = _import_ray()
    with _environment(_LOCAL_RAY_ENV):
        ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=128 * _MIB, **_INIT_OPTIONS)


# Ray settings (read from RAY_<name> by the processes that ray.init starts; names a Ray version does
# not know are ignored) for the local instance: Ray starts one idle worker per CPU ahead of the first
# task, and a pool of a few actors takes a few of them at most, so on a 16-CPU node with 2 actors that
# is 14 Python processes importing Ray for nothing (the 2 actors start their own at once instead).
_LOCAL_RAY_ENV = {"RAY_prestart_worker_first_driver": "0"}


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """Set environment variables that are not set already (the user's win), for the block only."""
    added = {key: value for key, value in values.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def run_ray(tasks: Sequence[Task], make_worker: WorkerFactory, config: Any) -> EngineResult:
    """Run ``tasks`` on a pool of Ray actors (see the module docstring).

    Joins ``runtime.ray.address``, or uses Ray already initialised in this process, or starts a
    local Ray instance (shut down at the end). Nothing is started when ``tasks`` is empty.

    Returns:
        Every task's outcome; ``dispatched`` lists the tries in dispatch order.

    Raises:
        ConfigError: Ray missing, an unreachable cluster, or resources that cannot fit.
        InputError, VidpropError: with ``runtime.fail_fast``, the first failure.
    """
    if not tasks:
        return EngineResult({})
    ray = _import_ray()
    started = _connect(ray, config.runtime.ray.address)
    try:
        plan = plan_workers(config.runtime.ray, config.runtime.device, _alive_nodes(ray))
        return _Driver(ray, tasks, make_worker, config, plan).run()
    finally:
        if started:
            ray.shutdown()
