"""Ray as an optional extra: the install hint, session ownership and worker resources."""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest

import actscope.distributed.cluster as cluster
from actscope.distributed import INSTALL_HINT, RayNotInstalledError, ray_session, require_ray
from actscope.errors import ActscopeError


def _hide_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "ray" else real(name, *args, **kwargs)

    monkeypatch.setattr(cluster.importlib.util, "find_spec", find_spec)


def test_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_ray(monkeypatch)
    assert not cluster.ray_available()
    with pytest.raises(RayNotInstalledError, match=r"needs Ray.*pip install 'actscope\[ray\]'"):
        require_ray("profiling with --ray")
    assert issubclass(RayNotInstalledError, ActscopeError)
    assert INSTALL_HINT == "pip install 'actscope[ray]'"


def test_importing_actscope_distributed_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = "import sys, actscope.distributed; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_session_keeps_a_running_cluster_and_sizes_workers(ray_cluster: ModuleType) -> None:
    with ray_session() as ray:
        assert ray is ray_cluster
        res = cluster.worker_resources(ray, 2, "auto")
    assert ray_cluster.is_initialized()
    assert res.num_cpus == 1 and res.num_gpus == 0 and res.device == "cpu"
    assert res.options() == {"num_cpus": 1.0, "num_gpus": 0.0}
    with pytest.raises(ActscopeError, match="no GPU"):
        cluster.worker_resources(ray_cluster, 2, "cuda")


class _FakeRay:
    def __init__(self, gpus: float) -> None:
        self.gpus = gpus

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 16.0, "GPU": self.gpus}


@pytest.mark.parametrize(
    ("gpus", "workers", "share"), [(8.0, 2, 1.0), (1.0, 2, 0.5), (1.0, 1, 1.0), (0.0, 3, 0.0)]
)
def test_gpu_share_per_worker(gpus: float, workers: int, share: float) -> None:
    res = cluster.worker_resources(_FakeRay(gpus), workers)
    assert res.num_gpus == share and res.device == ("cuda" if share else "cpu")
    assert cluster.worker_resources(_FakeRay(gpus), workers, "cpu").num_gpus == 0
