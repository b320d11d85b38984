"""One-pass CPU kernels (numba) for the per-batch reductions of :class:`SiteStats`.

The eager torch path reads an ``(R, D)`` batch a dozen times (conversion, |x|, x^2, row and
column sums, maxima, histogram, medians...). On a CPU that costs several times the forward
pass itself. These kernels read each entry once, in parallel over chunks of rows
(:mod:`.rows`), and produce exactly the per-batch quantities the torch path derives
(:class:`Partials`):

* per row: counted entries ``n``, ``sum x``, ``sum x^2``, ``sum x^4``, ``sum |x|`` (float32
  lanes over blocks of 512 entries, float64 across blocks), signed max and min, max |x|, massive entries (Sun et al., per-token
  lower median; a candidate is tested by counting, the median is selected only for rows with
  many candidates);
* per channel: counted entries, ``sum x``, ``sum x^2``, ``sum |x|``, max |x|, massive entries
  and the power sums ``P_1..P_4`` of ``x - ref`` about the state's reference (float32 blocks of
  32 rows, then float64; the first batch of a state, which has no reference yet, takes a second
  pass about its own channel means);
* the |x| histogram on the float32 bit-pattern bins of :mod:`actscope.stats.histogram`, added
  straight into the reducer's counts;
* counts of NaN, +Inf and -Inf entries in valid rows (excluded from everything else).

:func:`fold` adds them to a reducer's state in place and :func:`topk_events` selects the
batch's top-K events (:mod:`.events`). Inputs are bfloat16 (read through their 16 bit
patterns), float16 or float32. Padding rows (``valid`` False) are never read.
"""

from __future__ import annotations

try:  # numba is a hard dependency, but keep the torch path importable without it
    import numba  # noqa: F401
except ImportError:  # pragma: no cover
    _AVAILABLE = False
else:
    _AVAILABLE = True
    from actscope.stats.fused.events import event_fields, topk_events
    from actscope.stats.fused.fold import fold
    from actscope.stats.fused.partials import NBINS, Partials, partials

__all__ = ["NBINS", "Partials", "available", "event_fields", "fold", "partials", "topk_events"]


def available() -> bool:
    """True when the numba kernels can run."""
    return _AVAILABLE
