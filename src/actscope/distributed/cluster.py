"""Ray as an optional dependency: import guard, a cluster session, resources per worker.

actscope never schedules work itself: shards and models become Ray actors and tasks. Ray is
the ``ray`` extra (``pip install 'actscope[ray]'``); without it every entry point that needs
it raises :class:`RayNotInstalledError` with that command.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from actscope.errors import ActscopeError

INSTALL_HINT = "pip install 'actscope[ray]'"


class RayNotInstalledError(ActscopeError):
    """The command needs Ray, which is an optional extra."""


def ray_available() -> bool:
    """Whether ``import ray`` would succeed (checked without importing it)."""
    return importlib.util.find_spec("ray") is not None


def require_ray(what: str = "this command") -> ModuleType:
    """The ``ray`` module, or :class:`RayNotInstalledError` saying how to install it."""
    if not ray_available():
        raise RayNotInstalledError(f"{what} needs Ray, which is not installed; run: {INSTALL_HINT}")
    import ray

    return ray


@contextlib.contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> Iterator[ModuleType]:
    """Use the Ray runtime already initialised, else connect to ``address`` or start one.

    A local cluster is started with ``num_cpus`` CPUs (and ``num_gpus`` GPUs when given),
    no dashboard, and is shut down when the block ends; a runtime that was already running
    (``ray.init`` by the caller, or a test fixture) is left running.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus)
    ray.init(address=address, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class WorkerResources:
    """What one worker asks Ray for: CPUs, and a GPU share when the cluster has GPUs."""

    num_cpus: float
    num_gpus: float

    def options(self) -> dict[str, float]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}

    @property
    def device(self) -> str:
        """The device a worker loads its model on: ``cuda`` when it was given a GPU share."""
        return "cuda" if self.num_gpus > 0 else "cpu"


class ClusterInfo(Protocol):
    """What :func:`worker_resources` reads from Ray (the ``ray`` module satisfies it)."""

    def cluster_resources(self) -> dict[str, float]: ...


def worker_resources(ray: ClusterInfo, workers: int, device: str = "auto") -> WorkerResources:
    """Resources for each of ``workers`` workers: one GPU each when the cluster has enough.

    With fewer GPUs than workers, each worker gets ``gpus / workers`` of one (models then
    share a GPU); ``device="cpu"`` never asks for a GPU.
    """
    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0.0)) if device != "cpu" else 0.0
    if device.startswith("cuda") and gpus == 0:
        raise ActscopeError(f"device '{device}' was asked for but the Ray cluster has no GPU")
    share = 0.0 if gpus == 0 else min(1.0, gpus / workers)
    return WorkerResources(num_cpus=1.0, num_gpus=share)
