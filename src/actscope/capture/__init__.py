"""The capture engine: hooks on requested sites, padding masks, early stop, batch loop."""

from actscope.capture.hooks import ForwardState, Handles, StopForward, attach
from actscope.capture.runner import RunInfo, forward, position_ids, run
from actscope.capture.trace import Consumer, Edit, Trace, sitemap_of

__all__ = [
    "Consumer",
    "Edit",
    "ForwardState",
    "Handles",
    "RunInfo",
    "StopForward",
    "Trace",
    "attach",
    "forward",
    "position_ids",
    "run",
    "sitemap_of",
]
