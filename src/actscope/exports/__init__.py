"""Files for other tools: the llama.cpp importance matrix (GGUF imatrix)."""

from actscope.exports.imatrix import (
    GGUF_ARCH,
    Imatrix,
    ImatrixEntry,
    ImatrixError,
    entries_from_sums,
    gguf_arch_name,
    gguf_tensor_name,
    read_imatrix,
    write_imatrix,
)

__all__ = [
    "GGUF_ARCH",
    "Imatrix",
    "ImatrixEntry",
    "ImatrixError",
    "entries_from_sums",
    "gguf_arch_name",
    "gguf_tensor_name",
    "read_imatrix",
    "write_imatrix",
]
