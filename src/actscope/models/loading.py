"""Load a causal LM and its tokenizer from a name, a folder, a GGUF file or a hub id.

Resolution order for ``spec``:

1. an embedded default name (``smollm2-135m``, ``gemma3-270m``, see :mod:`.embedded`);
2. an existing path: a ``.gguf`` file, a folder holding ``config.json`` (a Hugging Face
   checkpoint) or a folder holding exactly one ``.gguf`` file;
3. a hub id ``org/name`` that is already in the local Hugging Face cache (actscope never
   downloads at run time; ``local_files_only=True``).

GGUF weights are dequantized by transformers (slow: 15-50 s). The first load writes a dense
float32 safetensors copy under :func:`~actscope.models.paths.cache_root`, keyed by the GGUF's
SHA-256, so later loads take about a second and give bit-identical weights.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from actscope.errors import ModelLoadError, ModelNotFoundError, suggest
from actscope.models.embedded import EMBEDDED, embedded_gguf
from actscope.models.paths import cache_root
from actscope.utils.atomic import atomic_dir, atomic_write_text
from actscope.utils.hashing import sha256_file

log = logging.getLogger(__name__)

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class LoadedModel:
    """A model ready for actscope: the HF module, its tokenizer and where it came from."""

    model: PreTrainedModel
    tokenizer: Any
    name: str
    source: str
    file_hash: str | None = None
    kind: str = "hf"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The transformers ``model_type`` (``llama``, ``gemma3_text``, ...)."""
        return str(self.model.config.model_type)

    @property
    def device(self) -> torch.device:
        """Execution device of the input embedding (where input ids must be placed)."""
        from actscope.utils.devices import input_device

        return input_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def max_positions(self) -> int | None:
        """Longest sequence the model was built for (``max_position_embeddings`` or GPT-2's
        ``n_positions``), or None when its config records no limit."""
        cfg = self.model.config
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(text, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def check_seq_len(self, seq_len: int, option: str = "--seq-len") -> None:
        """Refuse sequences longer than :attr:`max_positions` before any forward pass: GPT-2
        fails with an IndexError there, and rotary models run on, past the positions they were
        trained for, giving meaningless activations."""
        limit = self.max_positions
        if limit is not None and seq_len > limit:
            raise ModelLoadError(
                f"{option} {seq_len} is longer than the {limit} positions {self.name} supports "
                "(max_position_embeddings)"
            )

    def check_same_model(self, recorded: dict[str, Any], what: str) -> None:
        """Refuse ``what`` (a run, a file) made with another model than this one.

        ``recorded`` is the ``model`` entry of its manifest (:meth:`describe`). The weights'
        SHA-256 decides when both sides have one; otherwise family and parameter count must
        agree (a tiny or Hugging Face folder model has no file hash).
        """
        theirs, mine = recorded.get("file_hash"), self.file_hash
        name = recorded.get("name", "another model")
        if theirs and mine:
            if theirs != mine:
                raise ModelLoadError(
                    f"{what} was made with {name} (weights sha256 {str(theirs)[:12]}...), "
                    f"not with {self.name} ({mine[:12]}...)"
                )
            return
        n_params = int(sum(p.numel() for p in self.model.parameters()))
        for key, value in (("family", self.family), ("n_parameters", n_params)):
            if key in recorded and recorded[key] != value:
                raise ModelLoadError(
                    f"{what} was made with {name} ({key} {recorded[key]}), not with "
                    f"{self.name} ({key} {value})"
                )

    def describe(self) -> dict[str, Any]:
        """Manifest entry: name, source, file hash, family, dtype, device."""
        return {
            "name": self.name,
            "source": self.source,
            "file_hash": self.file_hash,
            "kind": self.kind,
            "family": self.family,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "n_parameters": int(sum(p.numel() for p in self.model.parameters())),
            **self.meta,
        }


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``auto``/None -> bfloat16 (on CUDA and on CPU); otherwise the named dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype '{dtype}'{suggest(dtype, _DTYPES)}") from None


def resolve_device(device: str | None) -> str:
    """``auto``/None -> ``cuda`` when a GPU is visible, else ``cpu``; a named device must exist.

    Raises :class:`ModelLoadError` for a name torch does not know (``tpu``), for ``cuda`` on a
    build or machine without CUDA, for a CUDA index beyond the visible GPUs and for ``mps``
    where Metal is not available.
    """
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(
            f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU visible"
            raise ModelLoadError(f"--device {device}: CUDA is not available ({why}); use cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ModelLoadError(f"--device {device}: only {count} CUDA device(s) are visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"--device {device}: Metal (mps) is not available; use cpu")
    return str(device)


def load_model(
    spec: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = "auto",
    device_map: str | dict[str, Any] | None = None,
    use_cache: bool = True,
) -> LoadedModel:
    """Load ``spec`` (see module docstring) in eval mode with gradients off.

    ``device_map`` is passed to accelerate (e.g. ``"auto"`` to spread a model larger than one
    GPU); when given, ``device`` is ignored. ``use_cache=False`` skips the dense GGUF cache.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    spec_s = str(spec)
    kind = model_kind(spec_s)
    if kind == "tiny":
        lm = _load_tiny(spec_s[5:], dt)
    elif kind == "embedded":
        gguf = embedded_gguf(spec_s)
        lm = _load_gguf(gguf, dt, use_cache=use_cache, name=spec_s)
        lm.kind = "embedded"
    elif kind == "path":
        lm = _load_path(Path(spec_s).expanduser(), dt, device_map, use_cache)
    else:
        lm = _load_hub(spec_s, dt, device_map)
    if device_map is None:
        lm.model.to(dev)
    lm.model.eval()
    lm.model.requires_grad_(False)
    from actscope.capture.trace import sitemap_of

    sitemap_of(lm)  # builds the site map and verifies each site's meaning (cached by file hash)
    return lm


def model_kind(spec: str | os.PathLike[str]) -> str:
    """Which way :func:`load_model` reads ``spec``: ``tiny``, ``embedded``, ``path`` or ``hub``
    (see the module docstring), without loading anything. Unknown names raise
    :class:`ModelNotFoundError`, so a command can refuse them before any other work."""
    spec_s = str(spec)
    if spec_s.startswith("tiny:"):
        from actscope.models.tiny import CONFIGS

        family = spec_s[5:]
        if family not in CONFIGS:
            raise ModelNotFoundError(
                f"unknown tiny family '{family}'{suggest(family, CONFIGS)}; "
                f"known: {', '.join(CONFIGS)}"
            )
        return "tiny"
    if spec_s in EMBEDDED:
        return "embedded"
    if Path(spec_s).expanduser().exists():
        return "path"
    if _HUB_ID.match(spec_s) and not spec_s.startswith((".", "/")):
        return "hub"
    names = list(EMBEDDED)
    raise ModelNotFoundError(
        f"unknown model '{spec_s}': not an embedded name ({', '.join(names)}), "
        f"an existing path or a hub id{suggest(spec_s, names)}"
    )


def _load_tiny(family: str, dt: torch.dtype) -> LoadedModel:
    from actscope.models.tiny import build_tiny, byte_tokenizer

    model = build_tiny(family, dtype=dt)
    return LoadedModel(model, byte_tokenizer(), name=f"tiny:{family}", source="random", kind="tiny")


def _load_path(path: Path, dt: torch.dtype, device_map: Any, use_cache: bool) -> LoadedModel:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"{path} is a file but not a .gguf model file")
        return _load_gguf(path, dt, use_cache=use_cache, name=path.stem)
    if (path / "config.json").exists():
        return _load_hf_dir(str(path), dt, device_map, name=path.name, local_only=True)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _load_gguf(ggufs[0], dt, use_cache=use_cache, name=ggufs[0].stem)
    raise ModelNotFoundError(
        f"{path} holds neither config.json nor exactly one .gguf file "
        f"(found {len(ggufs)} .gguf files)"
    )


def _load_hub(repo_id: str, dt: torch.dtype, device_map: Any) -> LoadedModel:
    try:
        return _load_hf_dir(repo_id, dt, device_map, name=repo_id, local_only=True)
    except ModelLoadError as exc:
        if not isinstance(exc.__cause__, OSError):  # found, but corrupt
            raise
        raise ModelNotFoundError(
            f"hub id '{repo_id}' is not in the local Hugging Face cache "
            "(actscope does not download at run time; fetch it first or pass a local path)"
        ) from exc


def _load_hf_dir(
    where: str, dt: torch.dtype, device_map: Any, *, name: str, local_only: bool
) -> LoadedModel:
    try:
        tok = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dt, device_map=device_map, local_files_only=local_only
        )
    except MemoryError:
        raise
    except Exception as exc:  # corrupt weights raise SafetensorError, UnpicklingError, ...
        raise ModelLoadError(f"cannot load '{where}': {_first_line(exc)}") from exc
    return LoadedModel(model=model, tokenizer=tok, name=name, source=str(where), kind="hf")


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message; library errors that are not plain I/O or
    value errors (``SafetensorError``, ``UnpicklingError``, ...) are named by their type."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, (OSError, ValueError)) and first:
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _check_gguf_header(path: Path) -> None:
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes {magic!r})")


def _hash_cached(path: Path) -> str:
    """SHA-256 of ``path``, memoised in the cache by (absolute path, size, mtime)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    index_file = cache_root() / "hashes.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):
        index = {}
    if key not in index:
        index[key] = sha256_file(path)
        atomic_write_text(index_file, json.dumps(index, indent=1))
    return str(index[key])


def _load_gguf(path: Path, dt: torch.dtype, *, use_cache: bool, name: str) -> LoadedModel:
    """Load a GGUF file, through the dense safetensors cache when possible."""
    _check_gguf_header(path)
    digest = _hash_cached(path)
    dense = cache_root() / "dense" / f"{path.stem}-{digest[:16]}"
    if use_cache and (dense / "config.json").exists():
        lm = _load_hf_dir(str(dense), dt, None, name=name, local_only=True)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            )
        except MemoryError:
            raise
        except Exception as exc:  # transformers raises many types for a corrupt file
            raise ModelLoadError(f"cannot read GGUF {path}: {_first_line(exc)}") from exc
        if use_cache and _write_dense_cache(model, tok, dense):
            # the first load reads what every later load reads: one path, the same numbers
            del model
            lm = _load_hf_dir(str(dense), dt, None, name=name, local_only=True)
        else:
            lm = LoadedModel(model=_cast(model, dt), tokenizer=tok, name=name, source=str(path))
    lm.source = str(path)
    lm.file_hash = digest
    lm.kind = "gguf"
    return lm


def _cast(model: PreTrainedModel, dt: torch.dtype) -> PreTrainedModel:
    """``model`` in ``dt`` as ``from_pretrained(dtype=dt)`` gives it: parameters and saved
    buffers cast, buffers that are not saved with the weights (rotary ``inv_freq``, computed
    in float32 at construction) left as they are. ``model.to(dt)`` would round the rotary
    frequencies to bf16 too, which moves SmolLM2's logits by up to 3."""
    keep = {
        name: buf
        for mod_name, mod in model.named_modules()
        for b_name, buf in mod._buffers.items()
        if buf is not None and b_name in mod._non_persistent_buffers_set
        for name in [f"{mod_name}.{b_name}" if mod_name else b_name]
    }
    model = model.to(dt)
    for name, buf in keep.items():
        mod_name, _, b_name = name.rpartition(".")
        model.get_submodule(mod_name)._buffers[b_name] = buf
    return model


def _write_dense_cache(model: PreTrainedModel, tok: Any, dense: Path) -> bool:
    """Save a dequantized GGUF model as float32 safetensors (atomically); False when it could
    not be written (the cache is an optimisation: a full disk does not stop the run)."""
    # transformers refuses save_pretrained on a quantized model: the GGUF weights are already
    # dequantized in memory, so the quantizer markers are cleared before saving.
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        with atomic_dir(dense) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
    except OSError as exc:  # a full disk must not stop the run: the cache is an optimisation
        log.warning("could not write the dense model cache %s: %s", dense, exc)
        return False
    return True
