"""Steering vectors on disk: the actscope safetensors format and llama.cpp control vectors.

**actscope format** (one ``.safetensors`` file). Tensors ``direction.{layer}``: float32 of shape
``(hidden_size,)``, the vector added at ``{site}.{layer}`` with coefficient 1. The header
metadata holds ``format = "actscope.steering/1"`` and ``actscope = <JSON>`` with the keys
``site`` (site kind, e.g. ``resid_post``), ``layers``, ``kind`` (``behaviour`` or ``condition``),
``model`` (name), ``model_hash``, ``family``, ``hidden_size``, ``method``, ``read``,
``dataset`` (name), ``dataset_hash``, ``stats`` (per layer: norm, explained variance, pair
agreement, bootstrap cosine...) and ``meta`` (anything else: split, condition threshold...).

**llama.cpp control vector** (GGUF, architecture ``controlvector``): keys
``controlvector.model_hint`` (the family) and ``controlvector.layer_count``, one float32 tensor
``direction.{N}`` per layer. llama.cpp adds ``direction.N`` to the output of block ``N``
(0-based), i.e. actscope's ``resid_post.N``; ``direction.0`` does not exist there. So a
``resid_post.L`` vector is written as ``direction.L`` (L >= 1) and a ``resid_pre.L`` vector
(the same tensor as ``resid_post.(L-1)``) as ``direction.(L-1)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from actscope.errors import ActscopeError, DataError
from actscope.utils.atomic import atomic_write_bytes

FORMAT = "actscope.steering/1"
RESIDUAL_KINDS = ("resid_pre", "resid_mid", "resid_post")
STEERABLE_KINDS = (*RESIDUAL_KINDS, "attn_out", "mlp_out")
"""Site kinds a trained vector may live at: the residual stream and what the attention and MLP
sublayers add to it (``resid_mid = resid_pre + attn_out``, ``resid_post = resid_mid + mlp_out``),
all of the hidden size, so a vector means a direction of the residual stream at each of them."""


@dataclass
class SteeringVector:
    """Per-layer vectors for one site kind, with where they came from and how good they are.

    ``directions[layer]`` is the float32 vector added at ``f"{site}.{layer}"`` with coefficient
    1 (its norm is the separation of the two classes along it, see :mod:`.extract`).
    """

    directions: dict[int, Tensor]
    site: str = "resid_post"
    kind: str = "behaviour"
    model: str = ""
    model_hash: str | None = None
    family: str = ""
    method: str = ""
    read: str = ""
    dataset: str = ""
    dataset_hash: str = ""
    stats: dict[int, dict[str, float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise DataError("a steering vector needs at least one layer")
        self.directions = {
            int(k): v.detach().to("cpu", torch.float32).reshape(-1)
            for k, v in sorted(self.directions.items())
        }
        sizes = {v.numel() for v in self.directions.values()}
        if len(sizes) != 1:
            raise DataError(f"steering vector layers have different sizes {sorted(sizes)}")
        for layer, v in self.directions.items():
            if not bool(torch.isfinite(v).all()):
                raise DataError(f"steering vector layer {layer} holds NaN or Inf")

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def hidden_size(self) -> int:
        return next(iter(self.directions.values())).numel()

    def __getitem__(self, layer: int) -> Tensor:
        try:
            return self.directions[layer]
        except KeyError:
            raise ActscopeError(
                f"the steering vector has no layer {layer} (layers: {self.layers})"
            ) from None

    def unit(self, layer: int) -> Tensor:
        """The direction of ``layer`` normalised to unit length."""
        v = self[layer]
        n = float(v.norm())
        if n == 0.0:
            raise ActscopeError(f"the steering vector of layer {layer} is zero")
        return v / n

    def select(self, layers: list[int]) -> SteeringVector:
        """A copy holding only ``layers``."""
        missing = [x for x in layers if x not in self.directions]
        if missing:
            raise ActscopeError(f"the steering vector has no layer(s) {missing} ({self.layers})")
        return SteeringVector(
            {x: self.directions[x] for x in layers},
            self.site,
            self.kind,
            self.model,
            self.model_hash,
            self.family,
            self.method,
            self.read,
            self.dataset,
            self.dataset_hash,
            {x: self.stats[x] for x in layers if x in self.stats},
            dict(self.meta),
        )

    def header(self) -> dict[str, Any]:
        """The JSON metadata block stored with the tensors."""
        return {
            "site": self.site,
            "layers": self.layers,
            "kind": self.kind,
            "model": self.model,
            "model_hash": self.model_hash,
            "family": self.family,
            "hidden_size": self.hidden_size,
            "method": self.method,
            "read": self.read,
            "dataset": self.dataset,
            "dataset_hash": self.dataset_hash,
            "stats": {str(k): v for k, v in self.stats.items()},
            "meta": self.meta,
        }

    # actscope format ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the safetensors file (tensors + JSON header) atomically."""
        tensors = {f"direction.{k}": v.contiguous() for k, v in self.directions.items()}
        meta = {"format": FORMAT, "actscope": json.dumps(_plain(self.header()))}
        return atomic_write_bytes(path, st_save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a file written by :meth:`save` (or a run folder holding one)."""
        p = resolve_vector_path(path)
        if p.suffix == ".gguf":
            return cls.from_gguf(p)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read steering vector {p}: {exc.strerror or exc}") from None
        try:
            tensors = st_load(raw)
            meta = _safetensors_metadata(raw)
        except (SafetensorError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{p} is not a readable safetensors file: {first}") from None
        if meta.get("format") != FORMAT:
            raise DataError(
                f"{p} is not an actscope steering vector (format={meta.get('format')!r})"
            )
        head = _header(p, meta)
        try:
            dirs = {
                int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("direction.")
            }
            stats = {int(k): dict(v) for k, v in head.get("stats", {}).items()}
        except (ValueError, TypeError, AttributeError):
            raise DataError(
                f"{p}: direction.N tensor names and stats keys must be layer numbers"
            ) from None
        return cls(
            dirs,
            head["site"],
            head.get("kind", "behaviour"),
            head.get("model", ""),
            head.get("model_hash"),
            head.get("family", ""),
            head.get("method", ""),
            head.get("read", ""),
            head.get("dataset", ""),
            head.get("dataset_hash", ""),
            stats,
            head.get("meta", {}),
        )

    def check_model(self, lm: Any) -> None:
        """Refuse a model other than the one the vector was trained on, in one line.

        The recorded weights hash decides when the vector and the model both have one (GGUF and
        embedded models); otherwise the recorded family must match (imported llama.cpp control
        vectors only carry a hint and are not checked). The hidden size is checked by
        :class:`~.apply.Steering`. Names are not compared: a path stem or hub id is not an identity.
        """
        theirs, ours = self.model_hash, getattr(lm, "file_hash", None)
        name = getattr(lm, "name", "this model")
        if theirs and ours and theirs != ours:
            raise ActscopeError(
                f"the steering vector was trained on {self.model or 'another model'} "
                f"(weights sha256 {theirs[:12]}), not on {name} ({ours[:12]})"
            )
        config = getattr(getattr(lm, "model", lm), "config", None)
        family = str(getattr(config, "model_type", "") or "")
        if self.family and self.method != "gguf" and family and self.family != family:
            raise ActscopeError(
                f"the steering vector was trained on a {self.family} model "
                f"({self.model or 'unnamed'}), not on {name} ({family})"
            )

    # llama.cpp ------------------------------------------------------------------------------
    def to_gguf(self, path: str | os.PathLike[str], scale: float = 1.0) -> Path:
        """Write a llama.cpp control-vector GGUF (``direction.N`` = ``scale`` x vector)."""
        import gguf

        offset = {"resid_post": 0, "resid_pre": -1}.get(self.site)
        if offset is None:
            raise ActscopeError(
                f"only resid_post / resid_pre vectors map to llama.cpp control vectors, not {self.site}"
            )
        rows = {layer + offset: v for layer, v in self.directions.items()}
        if any(n < 1 for n in rows):
            bad = [lay for lay in self.layers if lay + offset < 1]
            raise ActscopeError(
                f"layer(s) {bad} of {self.site} have no llama.cpp slot (direction.N needs N >= 1)"
            )
        # GGUFWriter needs a path: write into a private temporary folder, then publish the
        # bytes atomically next to the destination (control vectors are small).
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir) / "cv.gguf"
            w = gguf.GGUFWriter(str(tmp), "controlvector")
            w.add_string("controlvector.model_hint", self.family or "llama")
            w.add_int32("controlvector.layer_count", len(rows))
            for n, v in sorted(rows.items()):
                w.add_tensor(f"direction.{n}", (v * scale).numpy().astype("float32"))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            return atomic_write_bytes(path, tmp.read_bytes())

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a llama.cpp control vector; ``direction.N`` becomes the ``resid_post.N`` vector."""
        import gguf

        try:
            reader = gguf.GGUFReader(str(path))
        except (ValueError, OSError) as exc:
            raise DataError(f"cannot read GGUF control vector {path}: {exc}") from None
        arch = _gguf_str(reader, "general.architecture")
        if arch != "controlvector":
            raise DataError(f"{path} is a GGUF of architecture {arch!r}, not a control vector")
        dirs: dict[int, Tensor] = {}
        for t in reader.tensors:
            if t.name.startswith("direction."):
                dirs[int(t.name.split(".", 1)[1])] = torch.tensor(t.data.astype("float32")).reshape(
                    -1
                )
        if not dirs:
            raise DataError(f"{path} holds no direction.N tensors")
        hint = _gguf_str(reader, "controlvector.model_hint") or ""
        return cls(
            dirs, "resid_post", "behaviour", family=hint, method="gguf", meta={"source": str(path)}
        )


def resolve_vector_path(path: str | os.PathLike[str]) -> Path:
    """A vector file, or the vector inside a ``steer train`` run folder."""
    p = Path(path)
    if p.is_dir():
        for cand in ("exports/steering_vector.safetensors", "exports/condition.safetensors"):
            if (p / cand).exists():
                return p / cand
        raise DataError(f"{p} is a folder without exports/steering_vector.safetensors")
    if not p.exists():
        raise DataError(f"steering vector file {p} does not exist")
    return p


_HEADER_TYPES: dict[str, type | tuple[type, ...]] = {
    "site": str,
    "kind": str,
    "model": str,
    "model_hash": (str, type(None)),
    "family": str,
    "method": str,
    "read": str,
    "dataset": str,
    "dataset_hash": str,
    "stats": dict,
    "meta": dict,
}


def _header(p: Path, meta: dict[str, str]) -> dict[str, Any]:
    """The ``actscope`` JSON header of a vector file, checked key by key."""
    if "actscope" not in meta:
        raise DataError(f"{p} has no actscope metadata (the 'actscope' header entry is missing)")
    try:
        head = json.loads(meta["actscope"])
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(f"{p}: the actscope header is not valid JSON ({exc})") from None
    if not isinstance(head, dict) or "site" not in head:
        raise DataError(f"{p}: the actscope header must be a JSON object with a 'site'")
    for key, typ in _HEADER_TYPES.items():
        if key in head and not isinstance(head[key], typ):
            raise DataError(
                f"{p}: header field '{key}' has the wrong type ({type(head[key]).__name__})"
            )
    return head


def check_site_kind(site: str) -> str:
    """``site`` when steering vectors can be trained there (the residual stream and the two
    sublayer outputs added to it), else an :class:`ActscopeError` naming the choices."""
    if site not in STEERABLE_KINDS:
        raise ActscopeError(
            f"steering vectors live in the residual stream: site must be one of "
            f"{', '.join(STEERABLE_KINDS)}, not {site!r}"
        )
    return site


def _safetensors_metadata(raw: bytes) -> dict[str, str]:
    n = int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8 : 8 + n])
    return dict(head.get("__metadata__", {}))


def _gguf_str(reader: Any, key: str) -> str | None:
    f = reader.fields.get(key)
    if f is None:
        return None
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def _plain(obj: Any) -> Any:
    """JSON-safe copy: tensors/numpy to lists, NaN to None, tuple to list."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _plain(obj.tolist())
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
