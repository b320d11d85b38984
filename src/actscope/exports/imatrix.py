"""llama.cpp importance matrix (GGUF ``imatrix`` layout): writer, reader, tensor names.

Format (what ``llama-imatrix`` writes since it switched to GGUF, and what ``llama-quantize
--imatrix`` reads; source: llama.cpp ``tools/imatrix/imatrix.cpp`` and
``common/imatrix-loader.cpp``):

* metadata ``general.type = "imatrix"``, ``imatrix.datasets`` (array of strings),
  ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (uint32); the loader requires all three;
* per weight tensor ``<name>`` (a GGUF tensor name such as ``blk.3.attn_q.weight``):
  ``<name>.in_sum2``: float32, ggml shape ``[n_in, n_mat]`` (numpy ``(n_mat, n_in)``), the sum
  over tokens of ``x_j^2`` for every input column ``j``; ``<name>.counts``: float32, ggml
  shape ``[1, n_mat]``, the number of tokens summed; optionally ``<name>.in_sum`` (sum of
  ``x_j``). ``n_mat`` is 1 for a dense matrix and the number of experts for a stacked MoE
  expert tensor (each expert with its own sums and count);
* tensors in sorted name order. ``llama-quantize`` uses ``in_sum2 / counts`` (mean square).

The writer uses the ``gguf`` package (``GGUFWriter`` also records ``general.architecture``:
the model's llama.cpp architecture name, ignored by the imatrix loader). Names are mapped
from Hugging Face module names with ``gguf``'s own tensor-name tables.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actscope.errors import ActscopeError

GGUF_ARCH = {
    "llama": "LLAMA",
    "mistral": "LLAMA",
    "mixtral": "LLAMA",
    "qwen2": "QWEN2",
    "qwen3": "QWEN3",
    "qwen2_moe": "QWEN2MOE",
    "qwen3_moe": "QWEN3MOE",
    "gemma2": "GEMMA2",
    "gemma3": "GEMMA3",
    "gemma3_text": "GEMMA3",
    "olmo2": "OLMO2",
    "phi3": "PHI3",
    "gpt2": "GPT2",
    "gpt_neox": "GPTNEOX",
}
"""transformers ``model_type`` -> ``gguf.MODEL_ARCH`` member (llama.cpp converts Mistral and
Mixtral to the ``llama`` architecture)."""


class ImatrixError(ActscopeError):
    """An importance matrix that cannot be written or read."""


@dataclass
class ImatrixEntry:
    """Sums for one weight tensor: ``sum_sq`` and ``sum_x`` ``(n_mat, n_in)``, ``counts`` ``(n_mat,)``."""

    sum_sq: np.ndarray
    counts: np.ndarray
    sum_x: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.sum_sq = np.atleast_2d(np.asarray(self.sum_sq, dtype=np.float32))
        self.counts = np.asarray(self.counts, dtype=np.float32).reshape(-1)
        if self.sum_x is not None:
            self.sum_x = np.atleast_2d(np.asarray(self.sum_x, dtype=np.float32))
            if self.sum_x.shape != self.sum_sq.shape:
                raise ImatrixError("in_sum and in_sum2 shapes differ")
        if self.sum_sq.shape[0] != self.counts.shape[0]:
            raise ImatrixError(
                f"in_sum2 has {self.sum_sq.shape[0]} matrices but counts has {self.counts.size}"
            )

    @property
    def mean_sq(self) -> np.ndarray:
        """``sum_sq / count`` per matrix (1 where the count is 0, as llama-quantize does)."""
        c = self.counts[:, None]
        return np.where(c > 0, self.sum_sq / np.maximum(c, 1), 1.0)


@dataclass
class Imatrix:
    """An importance matrix: entries by GGUF tensor name, plus the file's metadata."""

    entries: dict[str, ImatrixEntry]
    datasets: list[str]
    chunk_count: int
    chunk_size: int


def gguf_arch_name(family: str) -> str:
    """llama.cpp architecture name of a transformers family (``llama``, ``gemma3``...)."""
    import gguf

    arch = _arch(family)
    return str(gguf.MODEL_ARCH_NAMES[arch])


def _arch(family: str) -> Any:
    import gguf

    if family not in GGUF_ARCH:
        raise ImatrixError(
            f"no GGUF tensor names for family '{family}' (known: {', '.join(sorted(GGUF_ARCH))})"
        )
    return gguf.MODEL_ARCH[GGUF_ARCH[family]]


def gguf_tensor_name(module: str, family: str, n_layers: int) -> str:
    """GGUF weight name of a Hugging Face module, e.g. ``blk.0.attn_q.weight``."""
    import gguf

    tmap = gguf.get_tensor_name_map(_arch(family), n_layers)
    name = tmap.get_name(f"{module}.weight", try_suffixes=(".weight",))
    if name is None:
        raise ImatrixError(f"no GGUF tensor name for module '{module}' ({family})")
    return str(name)


def write_imatrix(
    path: str | os.PathLike[str],
    entries: Mapping[str, ImatrixEntry],
    *,
    datasets: Sequence[str],
    chunk_count: int,
    chunk_size: int,
    arch: str = "llama",
) -> Path:
    """Write a GGUF importance matrix atomically (temporary file, then rename)."""
    import gguf

    if not entries:
        raise ImatrixError("an importance matrix needs at least one tensor")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_type(gguf.GGUFType.IMATRIX)
        w.add_array(gguf.Keys.IMatrix.DATASETS, [str(d) for d in datasets])
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, int(chunk_count))
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, int(chunk_size))
        for name in sorted(entries):
            e = entries[name]
            if e.sum_x is not None:
                w.add_tensor(f"{name}.in_sum", e.sum_x)
            w.add_tensor(f"{name}.in_sum2", e.sum_sq)
            w.add_tensor(f"{name}.counts", e.counts.reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def read_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read a GGUF importance matrix written by :func:`write_imatrix` or ``llama-imatrix``."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ImatrixError(f"cannot read imatrix {path}: {exc}") from exc
    kind = _field(reader, "general.type")
    if kind != "imatrix":
        raise ImatrixError(f"{path} is not an imatrix (general.type = {kind!r})")
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    entries: dict[str, ImatrixEntry] = {}
    for full in tensors:
        if not full.endswith(".in_sum2"):
            continue
        name = full[: -len(".in_sum2")]
        if f"{name}.counts" not in tensors:
            raise ImatrixError(f"{path}: '{name}' has in_sum2 but no counts")
        entries[name] = ImatrixEntry(
            sum_sq=tensors[full],
            counts=tensors[f"{name}.counts"],
            sum_x=tensors.get(f"{name}.in_sum"),
        )
    datasets = _field(reader, gguf.Keys.IMatrix.DATASETS) or []
    return Imatrix(
        entries=entries,
        datasets=list(datasets) if isinstance(datasets, list) else [str(datasets)],
        chunk_count=int(_field(reader, gguf.Keys.IMatrix.CHUNK_COUNT) or 0),
        chunk_size=int(_field(reader, gguf.Keys.IMatrix.CHUNK_SIZE) or 0),
    )


def _field(reader: Any, key: str) -> Any:
    f = reader.get_field(key)
    if f is None:
        return None
    return f.contents()


def entries_from_sums(
    sums: Mapping[str, Mapping[str, object]], family: str, n_layers: int
) -> dict[str, ImatrixEntry]:
    """Entries from ``{module name: {"sum_sq": [in], "count": n, "sum": [in] (optional)}}``.

    The dict layout of a profile run's ``exports/imatrix_sums.pt``; module names are mapped
    to GGUF tensor names with :func:`gguf_tensor_name`.
    """
    out: dict[str, ImatrixEntry] = {}
    for module, s in sums.items():
        sum_x = s.get("sum")
        out[gguf_tensor_name(module, family, n_layers)] = ImatrixEntry(
            sum_sq=np.asarray(s["sum_sq"], dtype=np.float64)[None, :],
            counts=np.asarray([s["count"]], dtype=np.float64),
            sum_x=None if sum_x is None else np.asarray(sum_x, dtype=np.float64)[None, :],
        )
    return out
