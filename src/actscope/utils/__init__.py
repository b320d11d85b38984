"""Small shared helpers (atomic writes, hashing)."""

from actscope.utils.atomic import atomic_dir, atomic_write_bytes, atomic_write_text
from actscope.utils.hashing import sha256_file, sha256_text

__all__ = ["atomic_dir", "atomic_write_bytes", "atomic_write_text", "sha256_file", "sha256_text"]
