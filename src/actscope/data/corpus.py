"""The in-memory corpus: an ordered list of text samples, each tagged with a domain.

A :class:`Corpus` is immutable. Its content hash and its splits are defined from sample ids and
texts only, so they are the same on every machine and in every process (Ray workers included).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

from actscope.errors import DataError

UNLABELED = "unlabeled"
"""Domain given to samples whose source does not name one."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One document: a stable ``id``, its ``domain``, the ``text`` and where it came from."""

    id: str
    domain: str
    text: str
    source: str = ""


def _unit_hash(seed: int, sample_id: str) -> int:
    """64-bit integer from sha256(f"{seed}:{sample_id}"): a seeded, platform-independent key."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class Corpus:
    """An ordered, immutable collection of :class:`Sample` with unique ids.

    ``name`` says where the corpus came from (``"default"``, a path, or a derived name such as
    ``"default|split(0.25,seed=0)[0]"``) and is recorded in run manifests next to :attr:`hash`.
    """

    def __init__(self, samples: Iterable[Sample], name: str = "corpus") -> None:
        self.samples: tuple[Sample, ...] = tuple(samples)
        self.name = name
        seen: set[str] = set()
        for s in self.samples:
            if s.id in seen:
                raise DataError(f"corpus {name!r} has duplicate sample id {s.id!r}")
            seen.add(s.id)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __repr__(self) -> str:
        return f"Corpus(name={self.name!r}, samples={len(self)}, domains={list(self.domains)})"

    @cached_property
    def domains(self) -> tuple[str, ...]:
        """The sorted distinct domain names; ``domain_ids`` of batches index into this tuple."""
        return tuple(sorted({s.domain for s in self.samples}))

    @cached_property
    def hash(self) -> str:
        """Hex sha256 over every sample in order, each fed as len-prefixed UTF-8 id and text.

        hash = sha256( concat_i [ len(id_i) ":" id_i len(text_i) ":" text_i ] ), lengths in
        bytes. The domain and source are labels and do not change the hash; order does.
        """
        h = hashlib.sha256()
        for s in self.samples:
            for part in (s.id, s.text):
                raw = part.encode("utf-8")
                h.update(f"{len(raw)}:".encode())
                h.update(raw)
        return h.hexdigest()

    def domain_mix(self) -> dict[str, dict[str, int]]:
        """``{domain: {"samples": n, "chars": c}}`` for every domain, in sorted domain order."""
        mix = {d: {"samples": 0, "chars": 0} for d in self.domains}
        for s in self.samples:
            mix[s.domain]["samples"] += 1
            mix[s.domain]["chars"] += len(s.text)
        return mix

    def split(self, fraction: float, seed: int = 0) -> tuple[Corpus, Corpus]:
        """Split into two disjoint corpora ``(first, rest)``, stratified by domain.

        Within each domain, samples are ranked by sha256(f"{seed}:{id}") and the first
        round(fraction * n_domain) go to ``first``. Membership depends only on ids, seed and the
        per-domain counts, never on the process; both parts keep the original sample order.
        """
        if not 0.0 < fraction < 1.0:
            raise DataError(f"split fraction must be in (0, 1), got {fraction}")
        chosen: set[str] = set()
        for domain in self.domains:
            ids = [s.id for s in self.samples if s.domain == domain]
            ids.sort(key=lambda i: (_unit_hash(seed, i), i))
            chosen.update(ids[: round(fraction * len(ids))])
        tag = f"{self.name}|split({fraction:g},seed={seed})"
        first = Corpus((s for s in self.samples if s.id in chosen), f"{tag}[0]")
        rest = Corpus((s for s in self.samples if s.id not in chosen), f"{tag}[1]")
        return first, rest

    def shard(self, index: int, count: int) -> Corpus:
        """Shard ``index`` of ``count``: the samples at positions ``index, index + count, ...``.

        The ``count`` shards are disjoint, their union is the corpus, and each keeps the
        corpus' interleaving of domains.
        """
        if count < 1 or not 0 <= index < count:
            raise DataError(f"shard index must satisfy 0 <= index < count, got {index}/{count}")
        return Corpus(self.samples[index::count], f"{self.name}|shard({index}/{count})")

    def take(self, n: int) -> Corpus:
        """The first ``n`` samples taken round-robin across domains (sorted domain order).

        Each domain's samples keep their corpus order; a domain that runs out is skipped, so
        ``take(n)`` of a corpus stored domain by domain still holds every domain.
        """
        if n < 0:
            raise DataError(f"take needs n >= 0, got {n}")
        queues = [[s for s in self.samples if s.domain == d] for d in self.domains]
        picked: list[Sample] = []
        depth = 0
        while len(picked) < n and any(depth < len(q) for q in queues):
            picked.extend(q[depth] for q in queues if depth < len(q))
            depth += 1
        return Corpus(picked[:n], f"{self.name}|take({n})")
