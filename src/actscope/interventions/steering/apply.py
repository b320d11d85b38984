"""Apply steering vectors through the capture engine's hooks.

For a hidden state ``h`` at ``{site}.{layer}``, vector ``v`` (unit ``u = v / |v|``),
coefficient ``c`` and gate ``g`` in {0, 1} (position window x real token x condition):

* ``add``:        ``h + g c v``
* ``ablate``:     ``h - g (h . u) u``                       (the direction projected out)
* ``ablate_add``: ``h - g (h . u) u + g c v``
* ``clamp``:      ``h + g (c |v| - h . u) u``               (projection set to ``c |v|``)

``c`` may differ per layer (a mapping) and per batch element (a length-B sequence), and so may
``v`` (a list of B vectors). Ungated tokens are returned bit-identical.

**Positions** are relative to the end of the prompt: ``r = i - i_last`` where ``i`` is a token's
real-token index (padding excluded) and ``i_last`` that of the last prompt token. ``r = 0`` is
the last prompt token (whose output is the first generated token), ``r = k`` the k-th generated
token fed back. A :class:`Window` keeps ``start <= r < stop``; ``all`` = every real token,
``gen`` = ``r >= 0`` (every token whose output is generated, the first one included),
``prompt`` = ``r <= 0``. For generation, :meth:`Steering.set_prompt` declares the padded
prompt (:func:`~.generate.generate` does it); a pre-hook on the decoder stack then places each
forward pass from its shape alone (a cached step continues where the last pass ended, a longer
pass re-feeds the sequence), so the window lands on the same tokens with and without a KV cache,
with left or right padding and in any batch, whichever way a transformers version passes its
cache and mask (:class:`_Tracker`). Without ``set_prompt`` each forward pass is its own prompt
unless its attention mask or cache says earlier tokens came before.

Conditions (:mod:`.conditional`) are evaluated per sample from the hidden state at their own
site: latched at prefill (needs the condition site to run before the steered sites, or a
:meth:`Steering.prepare` pre-pass), or re-evaluated per token (``per_token=True``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from actscope.capture import ForwardState, Handles, StopForward, attach, forward, sitemap_of
from actscope.capture.hooks import HookOwner
from actscope.errors import ActscopeError
from actscope.interventions.steering.conditional import Condition, Expr
from actscope.interventions.steering.vector import SteeringVector

Mode = Literal["add", "ablate", "ablate_add", "clamp"]
MODES = ("add", "ablate", "ablate_add", "clamp")
Coef = float | Sequence[float] | Tensor | Mapping[int, Any]


@dataclass(frozen=True)
class Window:
    """Positions ``start <= r < stop`` relative to the prompt end (None = unbounded)."""

    start: int | None = None
    stop: int | None = None

    @property
    def is_all(self) -> bool:
        return self.start is None and self.stop is None

    def __str__(self) -> str:
        if self.is_all:
            return "all"
        return (
            f"{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"
        )


def parse_positions(spec: str | Window | None) -> Window:
    """``all``, ``gen``, ``prompt`` or ``START:STOP`` (either may be empty) -> :class:`Window`."""
    if spec is None:
        return Window()
    if isinstance(spec, Window):
        return spec
    s = spec.strip().lower()
    named = {
        "all": Window(),
        "gen": Window(0, None),
        "generated": Window(0, None),
        "prompt": Window(None, 1),
    }
    if s in named:
        return named[s]
    a, sep, b = s.partition(":")
    try:
        if sep:
            return Window(int(a) if a.strip() else None, int(b) if b.strip() else None)
    except ValueError:
        pass
    raise ActscopeError(f"bad positions {spec!r}; use all, gen, prompt or START:STOP (e.g. -3:)")


class _Tracker:
    """Which tokens of which sequence the current forward pass feeds (what the hooks read).

    The tracker holds one padded *sequence*: the real-token mask ``M`` of its known columns
    (B, L), the number of real prompt tokens of each row, and ``fed``, the columns already run.
    Columns after ``L`` are generated tokens, all real (``generate`` extends its mask with ones).
    A forward pass of ``T`` tokens feeds the columns ``[p, p + T)``; the real index of column
    ``c`` is ``cumsum(M)[c] - 1`` and ``r = real - (prompt_len - 1)``.

    **Pinned** (:meth:`pin`, done by ``steer.generate``, the A/B scorer and ``prepare``): ``p``
    is derived from the sequence of forward shapes alone. The first pass after the pin starts
    at the declared ``past`` (0, or the length of a prefix already in a KV cache); later
    passes with ``T <= fed`` continue at ``p = fed`` (a cached step: one new token, or a prefill
    chunk) and passes with ``T > fed`` start again at ``p = 0`` (generation without a cache
    re-feeds the whole sequence, one token longer each step). Nothing is read from the
    forward's keyword arguments, which change between transformers versions: 5.25 renamed the
    cache argument (``past_key_values`` -> ``cache``) and, like 5.23, passes no attention mask
    when it is all ones, so a cached generation of an unpadded prompt looked like a new prompt
    at every step and the window missed the generated tokens (batch 1 and batch 3 differed).
    The shapes of the passes cannot drift that way. The ambiguity left (a whole sequence run
    twice with the same length) is resolved by pinning again before each new sequence.

    **Unpinned** (plain forward passes under ``with Steering``): each pass is a prompt of its
    own, unless it declares earlier columns: a 2-D attention mask wider than the input (its
    width - ``T`` columns came before) or a KV cache holding tokens (any argument with
    ``get_seq_length()``, whatever its name). The prompt is then the first pass with
    ``p = 0``. This path reads what the caller passes, so generation should pin.
    """

    def __init__(self) -> None:
        self.forward_id = 0
        self.past = 0
        self.shape: tuple[int, int] = (0, 0)
        self.device: torch.device | None = None
        self.pinned = False
        self.fed = 0
        self._start: int | None = None
        self._seq: Tensor | None = None  # (B, L) bool real-token mask of the known columns
        self._cum: Tensor | None = None  # (B, L) real index of each known column
        self.prompt_last: Tensor | None = None  # (B,) real index of the last prompt token
        self._all_real = True  # no padding anywhere: positions are plain column indices
        self._cache: dict[str, Tensor] = {}

    def reset(self) -> None:
        self.pinned, self.fed, self._start = False, 0, None
        self._seq = self._cum = self.prompt_last = None
        self._all_real, self._cache = True, {}

    def pin(self, attention_mask: Tensor, lengths: Tensor | None = None, past: int = 0) -> None:
        """Start a sequence: its known columns' mask, real prompt tokens per row (default:
        every real token of the mask) and the columns already run (a cached prefix)."""
        if attention_mask.dim() != 2 or attention_mask.shape[1] == 0:
            raise ActscopeError(
                f"set_prompt needs a (batch, length) attention mask, got {tuple(attention_mask.shape)}"
            )
        if not 0 <= past <= attention_mask.shape[1]:
            raise ActscopeError(
                f"past={past} is outside the prompt's {attention_mask.shape[1]} columns"
            )
        seq = attention_mask.bool()
        self._set_sequence(seq, lengths, all_real=bool(seq.all()))
        self.pinned, self.fed, self._start = True, past, past

    def unpin(self) -> None:
        self.pinned, self._start = False, None

    def _set_sequence(self, seq: Tensor, lengths: Tensor | None, *, all_real: bool) -> None:
        self._seq, self._cum, self._all_real = seq, seq.long().cumsum(-1) - 1, all_real
        n = seq.long().sum(-1) if lengths is None else torch.as_tensor(lengths).long()
        self.prompt_last = n.to(seq.device) - 1

    def update(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args and isinstance(args[0], Tensor):
            x = args[0]
        if x is None:
            raise ActscopeError(
                "steering cannot find input_ids or inputs_embeds in the forward call"
            )
        b, t = int(x.shape[0]), int(x.shape[1])
        self.shape, self.device = (b, t), x.device
        self.forward_id += 1
        self._cache = {}
        if self.pinned:
            assert self._seq is not None
            if self._seq.shape[0] != b:
                raise ActscopeError(
                    f"batch size changed from {self._seq.shape[0]} to {b} during generation "
                    "(beam search and num_return_sequences > 1 are not tracked by steering)"
                )
            if self._start is not None:
                self.past, self._start = self._start, None
            else:
                self.past = self.fed if t <= self.fed else 0
            self.fed = self.past + t
        else:
            self._follow(b, t, kwargs)
        if self._seq is not None and self._seq.device != x.device:
            self._set_device(x.device)

    def _follow(self, b: int, t: int, kwargs: dict[str, Any]) -> None:
        """Unpinned: place this pass from the caller's mask or cache (see the class docstring)."""
        am = kwargs.get("attention_mask")
        wide = isinstance(am, Tensor) and am.dim() == 2 and am.shape[0] == b and am.shape[1] >= t
        if wide:
            self.past = int(am.shape[1]) - t
        else:
            self.past = max((_cached_length(v) for v in kwargs.values()), default=0)
        if self.past == 0:
            if wide:  # no host sync to find out whether the mask has padding
                self._set_sequence(am.bool(), None, all_real=False)
            else:
                self._set_sequence(
                    torch.ones(b, t, dtype=torch.bool, device=self.device), None, all_real=True
                )
            return
        if self._seq is not None and self._seq.shape[0] != b:
            raise ActscopeError(
                f"batch size changed from {self._seq.shape[0]} to {b} during generation "
                "(beam search and num_return_sequences > 1 are not tracked by steering)"
            )
        last = self.prompt_last
        if wide:
            self._seq, self._cum = am.bool(), am.long().cumsum(-1) - 1
            self._all_real = False
        elif self._seq is None:
            self._seq = torch.ones(b, self.past, dtype=torch.bool, device=self.device)
            self._cum = torch.arange(self.past, device=self.device).expand(b, self.past)
            self._all_real = True
        if last is None:  # the prompt ended right before this pass
            last = self._seq[:, : self.past].long().sum(-1) - 1
        self.prompt_last = last

    def _set_device(self, device: torch.device) -> None:
        assert self._seq is not None and self._cum is not None and self.prompt_last is not None
        self._seq, self._cum = self._seq.to(device), self._cum.to(device)
        self.prompt_last = self.prompt_last.to(device)

    def _columns(self) -> tuple[Tensor, Tensor]:
        """(B, T) real-token mask and real index of the columns ``[past, past + T)``."""
        if "mask" not in self._cache:
            assert self._seq is not None and self._cum is not None
            b, t = self.shape
            width = self._seq.shape[1]
            cols = torch.arange(self.past, self.past + t, device=self._seq.device)
            inside = cols < width
            idx = cols.clamp(max=width - 1).expand(b, t)
            n_real = self._cum[:, -1:] + 1
            self._cache["mask"] = torch.where(inside, self._seq.gather(1, idx), True)
            self._cache["real"] = torch.where(
                inside, self._cum.gather(1, idx), n_real + (cols - width)
            )
        return self._cache["mask"], self._cache["real"]

    def mask(self) -> Tensor | None:
        """(B, T) bool mask of real tokens in this forward, or None when every token is real."""
        return None if self._all_real else self._columns()[0]

    def token_mask(self) -> Tensor:
        m = self.mask()
        return torch.ones(self.shape, dtype=torch.bool, device=self.device) if m is None else m

    def real(self) -> Tensor:
        """(B, T) real-token index of each token of this forward."""
        if self._all_real:
            if "real" not in self._cache:
                b, t = self.shape
                r = torch.arange(self.past, self.past + t, device=self.device)
                self._cache["real"] = r.expand(b, t)
            return self._cache["real"]
        return self._columns()[1]

    def rel(self) -> Tensor:
        """(B, T) position relative to the prompt end: real index - last prompt index."""
        if "rel" not in self._cache:
            assert self.prompt_last is not None
            self._cache["rel"] = self.real() - self.prompt_last[:, None]
        return self._cache["rel"]

    def window_gate(self, w: Window) -> Tensor | None:
        g = self.mask()
        if w.start is not None:
            g = (self.rel() >= w.start) if g is None else g & (self.rel() >= w.start)
        if w.stop is not None:
            g = (self.rel() < w.stop) if g is None else g & (self.rel() < w.stop)
        return g


def _cached_length(value: Any) -> int:
    """Tokens held by a KV cache (an object with ``get_seq_length()``), else 0."""
    get = getattr(value, "get_seq_length", None)
    if not callable(get):
        return 0
    try:
        return int(get())
    except (TypeError, ValueError, AttributeError):
        return 0


@dataclass
class _LeafState:
    gate: Tensor | None = None
    fid: int = -1
    pinned: Tensor | None = None
    score: Tensor | None = None
    run_sum: Tensor | None = None
    run_count: Tensor | None = None


class Steering(HookOwner):
    """Steer a model inside a ``with`` block (or between :meth:`attach` and :meth:`remove`).

    ``vector``: a :class:`SteeringVector`, a list of them (one per batch element, same site and
    layers) or ``{layer: tensor}`` (shape (D,) or (B, D); give ``site``). ``layers`` selects
    layers of the vector (default: all of them). ``coef``: a number, a length-B sequence or
    tensor, or ``{layer: number | sequence}``. ``positions``: a :class:`Window` or its string.
    ``condition``: a :class:`~.conditional.Condition` or a rule combining several;
    ``per_token`` overrides the leaves' own setting.
    """

    def __init__(
        self,
        target: Any,
        vector: SteeringVector | Sequence[SteeringVector] | Mapping[int, Tensor],
        *,
        layers: Sequence[int] | None = None,
        coef: Coef = 1.0,
        mode: Mode = "add",
        positions: str | Window | None = "all",
        condition: Expr | None = None,
        per_token: bool | None = None,
        site: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ActscopeError(f"unknown steering mode '{mode}'; known: {', '.join(MODES)}")
        self.sitemap = sitemap_of(target)
        self.mode: Mode = mode
        self.window = parse_positions(positions)
        self.kind, self.vectors = _normalise(vector, layers, site)
        hidden = self.sitemap.model.get_input_embeddings().weight.shape[1]
        for layer, v in self.vectors.items():
            if v.shape[-1] != hidden:
                raise ActscopeError(
                    f"vector of layer {layer} has size {v.shape[-1]}, the model's hidden size is {hidden}"
                )
        self.sites = {x: self.sitemap.get(f"{self.kind}.{x}") for x in self.vectors}
        for s in self.sites.values():
            if not s.editable:
                raise ActscopeError(f"site '{s.name}' is observe-only and cannot be steered")
        self.coefs = {x: _coef_tensor(coef, x) for x in self.vectors}
        if condition is not None and per_token is not None:
            condition = condition.with_per_token(per_token)
        self.condition = condition
        leaves = condition.leaves() if condition is not None else []
        self.leaves: list[Condition] = list({id(c): c for c in leaves}.values())
        self._order = {n: i for i, n in enumerate(self.sitemap.names)}
        first = min(self._order[s.name] for s in self.sites.values())
        for leaf in self.leaves:
            site = self.sitemap.get(leaf.site)
            if leaf.direction.numel() != hidden:
                raise ActscopeError(f"condition at {leaf.site} has size {leaf.direction.numel()}")
            if leaf.per_token and self._order[site.name] > first:
                raise ActscopeError(
                    f"a per-token condition at {site.name} runs after the steered site "
                    f"{min(self.sites.values(), key=lambda s: self._order[s.name]).name}; "
                    "put the condition at or before the first steered layer"
                )
        self._needs_prepare = any(
            not leaf.per_token and self._order[self.sitemap.get(leaf.site).name] > first
            for leaf in self.leaves
        )
        self._tracker = _Tracker()
        self._state = ForwardState()
        self._handles = Handles()
        self._leaf: dict[int, _LeafState] = {}
        self._consts: dict[tuple[int, str, str], Tensor] = {}
        self._gate_cache: tuple[int, Tensor | None] = (-1, None)
        self._preparing = False

    # lifecycle ------------------------------------------------------------------------------
    def attach(self) -> Steering:
        """Register the hooks (idempotent); the model is steered until :meth:`remove`."""
        if self._handles.items:
            return self
        self._tracker.reset()
        self._leaf = {id(leaf): _LeafState() for leaf in self.leaves}
        try:
            parent = self.sitemap.adapter.layers.rpartition(".")[0]
            stack = self.sitemap.model.get_submodule(parent)  # "" is the model itself
            self._handles.add(stack.register_forward_pre_hook(self._on_forward, with_kwargs=True))
            for leaf in self.leaves:
                site = self.sitemap.get(leaf.site)
                self._handles.items += attach(
                    self.sitemap, site, self._observer(leaf), self._state
                ).items
            for layer, site in self.sites.items():
                self._handles.items += attach(
                    self.sitemap, site, self._edit(layer), self._state, edit=True
                ).items
        except BaseException:
            self._handles.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove exactly the hooks this object registered; the model is unsteered again."""
        self._handles.remove()
        self._tracker.reset()

    @property
    def active(self) -> bool:
        return bool(self._handles.items)

    @property
    def needs_prepare(self) -> bool:
        """True when a latched condition runs after a steered site (call :meth:`prepare`)."""
        return self._needs_prepare

    def set_prompt(
        self, attention_mask: Tensor, *, lengths: Tensor | None = None, past: int = 0
    ) -> None:
        """Declare the sequence the coming forward passes feed (do it before each generation).

        ``attention_mask`` (B, L): real-token mask of the sequence's known columns, the padded
        prompt for generation (later columns are generated tokens, all real). ``lengths`` (B,):
        real prompt tokens of each row when the mask also covers teacher-forced response tokens
        (default: every real token is prompt). ``past``: columns already run before the next
        forward pass (a prefix held in a KV cache). From then on the position of every forward
        pass follows from the shapes of the passes alone (see :class:`_Tracker`), whichever way
        the transformers version passes its cache and mask.
        """
        self._tracker.pin(attention_mask, lengths, past)

    def reset(self) -> None:
        """Forget the pinned prompt and every condition decision."""
        self._tracker.reset()
        self._leaf = {id(leaf): _LeafState() for leaf in self.leaves}

    def prepare(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor | None:
        """Decide latched conditions on the unsteered prompt with one partial forward pass.

        Returns the (B,) boolean gate of the rule for these prompts (None without conditions).
        Must be called while attached; the decision holds until :meth:`reset`.
        """
        if not self.leaves:
            return None
        if not self.active:
            raise ActscopeError("Steering.prepare() needs the steering to be attached")
        last = max(self.sitemap.get(leaf.site).layer or 0 for leaf in self.leaves)
        stop = self.sitemap.layers[last].register_forward_hook(_raise_stop)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        for st in self._leaf.values():
            st.pinned, st.gate = None, None
        self._preparing = True
        self._tracker.unpin()
        try:
            with torch.inference_mode():
                forward(self.sitemap.model, input_ids, mask)
        except StopForward:
            pass
        finally:
            stop.remove()
            self._preparing = False
        for leaf in self.leaves:
            st = self._leaf[id(leaf)]
            if not leaf.per_token:
                st.pinned = st.gate
        self._tracker.pin(mask)
        return self.decisions()

    def decisions(self) -> Tensor | None:
        """The rule's latest per-sample decision (B,) (per-token rules: at the last token)."""
        if self.condition is None:
            return None

        def look(leaf: Condition) -> Tensor:
            st = self._leaf[id(leaf)]
            g = st.pinned if st.pinned is not None else st.gate
            if g is None:
                raise ActscopeError("no condition has been evaluated yet")
            return g[:, -1:]

        return self.condition.evaluate(look)[:, 0]

    # hooks ----------------------------------------------------------------------------------
    def _on_forward(self, mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._tracker.update(args, kwargs)
        self._state.mask = self._tracker.mask()

    def _observer(self, leaf: Condition) -> Any:
        unit = leaf.direction / leaf.direction.norm()
        units: dict[torch.device, Tensor] = {}

        def observe(value: Tensor, mask: Tensor | None) -> None:
            tr, st = self._tracker, self._leaf[id(leaf)]
            u = units.get(value.device)
            if u is None:
                u = units[value.device] = unit.to(value.device)
            h = value.float()
            sel = tr.token_mask() & (tr.real() >= leaf.prefix_tokens)
            if leaf.per_token:
                if tr.past == 0 or st.run_sum is None:
                    st.run_sum = torch.zeros(h.shape[0], h.shape[-1], device=h.device)
                    st.run_count = torch.zeros(h.shape[0], device=h.device)
                csum = (h * sel[..., None]).cumsum(1) + st.run_sum[:, None]
                count = sel.cumsum(1) + st.run_count[:, None]  # type: ignore[index]
                score = leaf.scores(csum / count.clamp_min(1)[..., None], u)
                st.gate = leaf.fires(score) & (count > 0)
                st.run_sum, st.run_count = csum[:, -1], count[:, -1].float()
            else:
                if st.pinned is not None or (tr.past > 0 and st.gate is not None):
                    return
                sel = sel & (tr.rel() <= -leaf.suffix_tokens)
                n = sel.sum(1, keepdim=True)
                mean = (h * sel[..., None]).sum(1) / n.clamp_min(1)
                score = leaf.scores(mean, u)
                st.gate = leaf.fires(score)[:, None] & (n > 0)
            st.score, st.fid = score, tr.forward_id

        return observe

    def _leaf_gate(self, leaf: Condition) -> Tensor:
        st, tr = self._leaf[id(leaf)], self._tracker
        if not leaf.per_token:
            if st.pinned is not None:
                return st.pinned
            if st.gate is not None and (st.fid == tr.forward_id or tr.past > 0):
                return st.gate
        elif st.gate is not None and st.fid == tr.forward_id:
            return st.gate
        raise ActscopeError(
            f"the condition at {leaf.site} has not been evaluated before the steered site; call "
            "Steering.prepare(input_ids, attention_mask) first (steer.generate does this)"
        )

    def _gate(self) -> Tensor | None:
        fid = self._tracker.forward_id
        if self._gate_cache[0] == fid:
            return self._gate_cache[1]
        g = self._tracker.window_gate(self.window)
        if self.condition is not None:
            c = self.condition.evaluate(self._leaf_gate)
            g = c if g is None else g & c
        self._gate_cache = (fid, g)
        return g

    def _const(self, layer: int, name: str, value: Tensor) -> Tensor:
        """Per-layer constants on the value's device: delta (add), unit, c v and target."""
        key = (layer, name, f"{value.device}|{value.dtype}")
        got = self._consts.get(key)
        if got is not None:
            return got
        v = self.vectors[layer].to(value.device)
        c = self.coefs[layer].to(value.device)
        c = c[:, None] if c.dim() == 1 else c
        v2 = v if v.dim() == 2 else v[None]
        u = v2 / v2.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        table = {
            "delta": (c * v2)[:, None, :].to(value.dtype),
            "unit": u[:, None, :],
            "cv": (c * v2)[:, None, :],
            "target": (c * v2.norm(dim=-1, keepdim=True))[:, None, :],
        }
        for k, t in table.items():
            self._consts[(layer, k, key[2])] = t
        return table[name]

    def _edit(self, layer: int) -> Any:
        rows = _rows(self.vectors[layer], self.coefs[layer], layer)
        mode = self.mode

        def edit(value: Tensor, mask: Tensor | None) -> Tensor | None:
            if self._preparing:
                return None
            if rows is not None and value.shape[0] != rows:
                raise ActscopeError(
                    f"per-sample steering was given for {rows} samples but the batch has {value.shape[0]}"
                )
            g = self._gate()
            if mode == "add":
                new = value + self._const(layer, "delta", value)
            else:
                h = value.float()
                u = self._const(layer, "unit", value)
                proj = (h * u).sum(-1, keepdim=True)
                if mode == "ablate":
                    new = h - proj * u
                elif mode == "ablate_add":
                    new = h - proj * u + self._const(layer, "cv", value)
                else:
                    new = h + (self._const(layer, "target", value) - proj) * u
                new = new.to(value.dtype)
            return new if g is None else torch.where(g[..., None], new, value)

        return edit


def _raise_stop(mod: Any, args: Any, out: Any) -> None:
    raise StopForward


def _normalise(
    vector: SteeringVector | Sequence[SteeringVector] | Mapping[int, Tensor],
    layers: Sequence[int] | None,
    site: str | None,
) -> tuple[str, dict[int, Tensor]]:
    """(site kind, {layer: (D,) or (B, D) float32 tensor})."""
    if isinstance(vector, SteeringVector):
        chosen = list(layers) if layers is not None else vector.layers
        return site or vector.site, {x: vector[x] for x in chosen}
    if isinstance(vector, Mapping):
        chosen = list(layers) if layers is not None else sorted(vector)
        out = {}
        for x in chosen:
            if x not in vector:
                raise ActscopeError(f"no vector given for layer {x}")
            out[x] = torch.as_tensor(vector[x]).detach().float().cpu()
        return site or "resid_post", out
    vecs = list(vector)
    if not vecs or not all(isinstance(v, SteeringVector) for v in vecs):
        raise ActscopeError("vector must be a SteeringVector, a list of them, or {layer: tensor}")
    kinds = {v.site for v in vecs}
    if len(kinds) != 1:
        raise ActscopeError(f"per-sample vectors must share one site kind, got {sorted(kinds)}")
    chosen = list(layers) if layers is not None else vecs[0].layers
    return site or vecs[0].site, {x: torch.stack([v[x] for v in vecs]) for x in chosen}


def _rows(vec: Tensor, coef: Tensor, layer: int) -> int | None:
    """Number of per-sample rows of a layer's vector / coefficient (None when shared)."""
    sizes = {vec.shape[0]} if vec.dim() == 2 else set()
    sizes |= {coef.shape[0]} if coef.dim() == 1 else set()
    if len(sizes) > 1:
        raise ActscopeError(
            f"layer {layer}: per-sample vectors and coefficients differ in count {sorted(sizes)}"
        )
    return sizes.pop() if sizes else None


def _coef_tensor(coef: Coef, layer: int) -> Tensor:
    """Coefficient of ``layer``: a 0-d tensor or a (B,) tensor of per-sample coefficients."""
    if isinstance(coef, Mapping):
        if layer not in coef:
            raise ActscopeError(f"the coefficient mapping has no entry for layer {layer}")
        coef = coef[layer]
    t = torch.as_tensor(coef, dtype=torch.float32).detach().cpu()
    if t.dim() > 1:
        raise ActscopeError(
            f"coefficients must be a number or a 1-D sequence, got shape {tuple(t.shape)}"
        )
    return t


def steering(target: Any, vector: Any, **kw: Any) -> Steering:
    """Shorthand for :class:`Steering` (``with steering(lm, vec, coef=4): ...``)."""
    return Steering(target, vector, **kw)
