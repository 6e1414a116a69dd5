"""Config of the execution engines (plain data: importing it loads neither torch nor Ray)."""

from __future__ import annotations

from dataclasses import dataclass

from vidprop.config_base import check, option

__all__ = ["ENGINE_NAMES", "RayConfig"]

# Names of :data:`vidprop.engines.ENGINES` (kept here so that the config needs no engine import).
ENGINE_NAMES = ("local", "ray")


@dataclass(frozen=True)
class RayConfig:
    """How ``runtime.engine: ray`` uses a Ray cluster; none of it changes the masks."""

    address: str | None = option(
        None,
        help="Ray cluster to join ('auto' = the one started with `ray start` on this machine, or ray://HOST:PORT); "
        "null = start a local Ray instance for this run",
    )
    workers: int = option(
        0,
        help="number of Ray actors, each holding one pipeline; 0 = one per GPU of the cluster "
        "(per gpus_per_worker), or 1 on a cluster without GPUs",
    )
    gpus_per_worker: float | None = option(
        None, help="GPUs per actor (fractions share a GPU); null = 1 when the cluster has GPUs, else 0"
    )
    cpus_per_worker: int = option(
        0,
        help="CPUs per actor, also its torch and OpenMP thread count; 0 = a GPU's share of its node's CPUs "
        "(without GPUs: the cluster's CPUs divided by the workers, at most one node's)",
    )
    memory_per_worker_gb: float = option(
        0.0,
        help="host memory declared per actor in GiB (Ray places no more actors on a node than fit); "
        "0 = the actor's share of its node's memory resource",
    )
    max_tries: int = option(
        3,
        help="tries of a video whose actor or node dies (a crash, a kill, Ray's out-of-memory killer) before it is "
        "reported failed; errors raised by the video itself are never retried",
    )

    def __post_init__(self) -> None:
        check(self.address is None or bool(self.address.strip()), "address", self.address, "null, 'auto' or HOST:PORT")
        check(self.workers >= 0, "workers", self.workers, "an integer >= 0 (0 = automatic)")
        check(
            self.gpus_per_worker is None or self.gpus_per_worker >= 0,
            "gpus_per_worker",
            self.gpus_per_worker,
            "null or a number >= 0",
        )
        check(self.cpus_per_worker >= 0, "cpus_per_worker", self.cpus_per_worker, "an integer >= 0 (0 = automatic)")
        check(self.memory_per_worker_gb >= 0, "memory_per_worker_gb", self.memory_per_worker_gb, "a number >= 0 (0 = automatic)")
        check(self.max_tries >= 1, "max_tries", self.max_tries, "an integer >= 1")
