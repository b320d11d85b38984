"""Scale-out on existing engines: Ray actors for profiling and sweeps, accelerate for big models.

Ray is optional (``pip install 'actscope[ray]'``); importing this package never imports it.
"""

from actscope.distributed.cluster import (
    INSTALL_HINT,
    RayNotInstalledError,
    ray_available,
    ray_session,
    require_ray,
)
from actscope.distributed.devices import dispatch, load_dispatched
from actscope.distributed.profile import merge_states, profile_ray, shard_batches
from actscope.distributed.sweep import (
    SweepError,
    SweepModel,
    SweepResult,
    SweepSpec,
    load_sweep,
    parse_sweep,
    run_sweep,
)
from actscope.utils.devices import execution_device, input_device

__all__ = [
    "INSTALL_HINT",
    "RayNotInstalledError",
    "SweepError",
    "SweepModel",
    "SweepResult",
    "SweepSpec",
    "dispatch",
    "execution_device",
    "input_device",
    "load_dispatched",
    "load_sweep",
    "merge_states",
    "parse_sweep",
    "profile_ray",
    "ray_available",
    "ray_session",
    "require_ray",
    "run_sweep",
    "shard_batches",
]
