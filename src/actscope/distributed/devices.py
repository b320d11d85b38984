"""Models spread over several devices with accelerate, and where their sites' tensors live.

``load_model(spec, device_map=...)`` hands Hugging Face folders to transformers, which
dispatches them with accelerate. Models that actscope builds itself (``tiny:``) or loads from
GGUF are created whole on the CPU; :func:`dispatch` spreads such a model afterwards with
``accelerate.dispatch_model`` and :func:`load_dispatched` does whichever applies.

What hooks see on a split model. accelerate wraps each placed module's ``forward`` in an
``AlignDevicesHook`` that moves the inputs to the module's execution device (and, for
offloaded modules, loads the weights for the duration of the call). PyTorch runs forward
pre-hooks *before* ``forward`` and forward hooks *after* it, so:

* an ``out`` site (a module's output) arrives on the module's execution device;
* an ``in`` site (a module's input) arrives where its producer computed it, i.e. before
  accelerate moved it, which is the device of the previous module.

Either way the tensor is delivered where it was computed, with no copy. A consumer that mixes
a site's tensor with batch tensors (the padding mask, token ids) must move those to
``value.device``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from actscope.errors import ActscopeError


def dispatch(
    lm: Any,
    device_map: str | dict[str, Any],
    *,
    max_memory: dict[Any, Any] | None = None,
    offload_dir: str | os.PathLike[str] | None = None,
    main_device: str | None = None,
) -> Any:
    """Spread the loaded model of ``lm`` over devices with accelerate; returns ``lm``.

    ``device_map``: ``"auto"`` (accelerate's ``infer_auto_device_map`` under ``max_memory``)
    or a mapping ``{module path: device}`` with devices such as ``0``, ``"cuda:1"``,
    ``"cpu"`` or ``"disk"`` (needs ``offload_dir``). ``main_device`` is where ``cpu``/``disk``
    modules execute: accelerate's default is the first GPU of the map (weights streamed to it),
    ``"cpu"`` makes them run on the CPU.
    """
    from accelerate import dispatch_model, infer_auto_device_map

    model = getattr(lm, "model", lm)
    if isinstance(device_map, str):
        if device_map != "auto":
            raise ActscopeError(f"device_map must be 'auto' or a mapping, got '{device_map}'")
        no_split = getattr(model, "_no_split_modules", None) or []
        device_map = infer_auto_device_map(
            model, max_memory=max_memory, no_split_module_classes=list(no_split)
        )
    if "disk" in device_map.values() and offload_dir is None:
        raise ActscopeError("a device_map with 'disk' entries needs an offload_dir")
    if offload_dir is not None:
        Path(offload_dir).mkdir(parents=True, exist_ok=True)
    dispatch_model(
        model,
        device_map=dict(device_map),
        main_device=main_device,
        offload_dir=None if offload_dir is None else str(offload_dir),
    )
    return lm


def load_dispatched(
    spec: str,
    *,
    dtype: str = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """``load_model`` with ``device_map``, dispatching models transformers did not place."""
    from actscope.models import load_model

    lm = load_model(
        spec, dtype=dtype, device="cpu" if device_map else "auto", device_map=device_map
    )
    if device_map is not None and not getattr(lm.model, "hf_device_map", None):
        dispatch(lm, device_map, max_memory=max_memory, offload_dir=offload_dir)
    return lm
