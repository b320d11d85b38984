"""The activation-magnitude profile (``actscope profile`` / ``actscope compare``)."""

from actscope.analyses.profile.api import (
    ProfileResult,
    ProfileState,
    collect,
    prepare_batches,
    profile,
)
from actscope.analyses.profile.compare import compare_runs
from actscope.analyses.profile.config import ProfileConfig
from actscope.analyses.profile.finalize import finalize
from actscope.analyses.profile.write import read_run, write_run

__all__ = [
    "ProfileConfig",
    "ProfileResult",
    "ProfileState",
    "collect",
    "compare_runs",
    "finalize",
    "prepare_batches",
    "profile",
    "read_run",
    "write_run",
]
