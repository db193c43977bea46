"""Cases: frozen, printable descriptions of one attention input, and how to build the tensors.

Everything random in a case comes from its ``seed``, so a failure can be rebuilt from the case
alone (its ``repr`` is valid Python). Cases are drawn by the strategies in
:mod:`harness.strategies` and fitted to an implementation's capabilities by
:meth:`Case.fit`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Optional

import torch

from harness import activations
from harness import masks as M
from harness.reference import attention_naive, attention_reference

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}

# Dense mask shapes SDPA broadcasts, and the policy dependencies each can carry.
MASK_SHAPES = {
    "LS": frozenset({"q"}),
    "B11S": frozenset({"b"}),
    "B1LS": frozenset({"b", "q"}),
    "BHLS": frozenset({"b", "h", "q"}),
    "1H1S": frozenset({"h"}),
    "1HLS": frozenset({"h", "q"}),
}
MASK_KINDS = ("none", "bool", "float", "is_causal")

# How q, k, v reach the kernel in memory (the values are the same): ``contiguous``; ``transposed``,
# a view of a (B, L, H, E) buffer as every transformer makes before ``.transpose(1, 2)``;
# ``sliced``, a batch/head/feature slice of a larger NaN-filled allocation (nonzero storage
# offset, row stride > E: out-of-bounds reads show up as NaN). ``kv=broadcast`` passes K/V of an
# MQA case (Hkv = 1) expanded to H heads with stride 0 and enable_gqa=False (pytorch#191937);
# ``mask=expanded`` passes the mask as a stride-0 view expanded to (B, H, L, S).
TENSOR_LAYOUTS = ("contiguous", "transposed", "sliced")
LAYOUT_KEYS = {"q": TENSOR_LAYOUTS, "k": TENSOR_LAYOUTS, "v": TENSOR_LAYOUTS,
               "kv": ("contiguous", "broadcast"), "mask": ("contiguous", "expanded")}


def parse_layout(spec: str) -> dict:
    """``"q=transposed,kv=broadcast"`` -> every key of :data:`LAYOUT_KEYS` with its layout."""
    out = {k: "contiguous" for k in LAYOUT_KEYS}
    if spec in ("", "contiguous"):
        return out
    for part in spec.split(","):
        key, _, val = part.strip().partition("=")
        if key not in LAYOUT_KEYS or val not in LAYOUT_KEYS[key]:
            raise ValueError(f"bad layout {part!r} in {spec!r}; known: "
                             + "; ".join(f"{k}={'|'.join(v)}" for k, v in LAYOUT_KEYS.items()))
        out[key] = val
    return out


def layout_spec(parts: dict) -> str:
    """The inverse of :func:`parse_layout`: only the non-contiguous entries, in a fixed order."""
    s = ",".join(f"{k}={parts[k]}" for k in LAYOUT_KEYS if parts.get(k, "contiguous") != "contiguous")
    return s or "contiguous"


def _lay_out_tensor(t: torch.Tensor, how: str) -> torch.Tensor:
    # Differentiable views, so gradients taken through the layout land on the logical tensor.
    if how == "transposed":
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if how == "sliced":
        B, H, L, E = t.shape
        pad = (0, 3, 0, 0, 1, 1, 1, 0)  # E + 3 columns, one head either side, one batch before
        big = torch.nn.functional.pad(t, pad, value=float("nan"))
        return big[1:, 1:H + 1, :, :E]
    return t


def apply_layout(spec: str, q, k, v, attn_mask):
    """(q, k, v, attn_mask, enable_gqa override or None) as the kernel receives them."""
    if spec in ("", "contiguous"):
        return q, k, v, attn_mask, None
    lay = parse_layout(spec)
    q, k, v = (_lay_out_tensor(t, lay[n]) for t, n in ((q, "q"), (k, "k"), (v, "v")))
    gqa = None
    H = q.shape[1]
    if lay["kv"] == "broadcast" and k.shape[1] == 1 and H > 1:
        k = k.expand(k.shape[0], H, *k.shape[2:])
        v = v.expand(v.shape[0], H, *v.shape[2:])
        gqa = False  # the kernel sees plain multi-head K/V that happen to share storage
    if lay["mask"] == "expanded" and attn_mask is not None:
        attn_mask = attn_mask.expand(q.shape[0], H, q.shape[2], k.shape[2])
    return q, k, v, attn_mask, gqa


# Past 2^15 keys one key's weight is ~1/S, far below any tolerance: a kernel that drops, wraps or
# mis-masks a handful of keys at an index-width boundary would still match the reference. So in
# a case this long the keys at the boundaries (and the first and last keys) carry marker values: each owns
# an output column (a one-hot value of MARKER_VALUE) and every other key's value is zero. A row's
# output is then its markers' weights alone, and losing one changes that column by all of itself,
# which even bfloat16's few-ulps floor sees (the floor is measured at the row's value scale, and
# random values there would set it 60x higher than one marker's share).
MARKED_FROM_S = 2 ** 15
BOUNDARY_KEYS = (2 ** 15 - 1, 2 ** 15, 2 ** 15 + 1, 2 ** 16 - 1, 2 ** 16, 2 ** 16 + 1)
MARKER_VALUE = 64.0

# The explicit scale is divided back out of q so that |logit| ~ magnitude whatever the scale, but
# only down to this |scale|: below it q.k would grow as 1/scale and leave half precision's range
# (q.k ~ 1e4 at scale 1e-4), so a tiny scale flattens the rows instead, as it does in a model.
# A scale of 0 divides out the default (every logit is 0 then, whatever q is).
MIN_DIVIDED_SCALE = 1e-2


def marked_keys(S: int) -> list:
    """The key positions that carry marker values in a case with ``S`` keys (none below 2^15)."""
    if S < MARKED_FROM_S:
        return []
    # Key 0 too: under a causal mask the few queries read only the first keys.
    return sorted({p for p in BOUNDARY_KEYS if p < S} | {0, S - 1})


@dataclass(frozen=True)
class Case:
    B: int = 1
    H: int = 1
    Hkv: int = 1
    L: int = 4
    S: int = 4
    E: int = 16
    Ev: int = 16
    dtype: str = "float32"
    device: str = "cpu"
    policy: str = "full()"  # a harness.masks spec: which (query, key) pairs are visible
    mask: str = "none"  # how the policy reaches the kernel: none | bool | float | is_causal
    mask_shape: str = "BHLS"
    alibi: bool = False  # add per-head ALiBi distance slopes to a float mask
    scale: Optional[float] = None
    magnitude: float = 1.0  # typical |logit|
    alignment: str = "top_left"  # how is_causal is aligned (the implementation's declaration)
    seed: int = 0
    activations: Optional[int] = None  # a layer of real Q/K/V (harness.activations) instead of random
    layout: str = "contiguous"  # memory layout of q/k/v/mask at the call (see TENSOR_LAYOUTS)
    mask_bias: float = 0.0  # float masks: finite entries offset by up to this, at full precision (see _bias)

    def __repr__(self) -> str:
        # Only the fields that differ from the defaults, strings in double quotes: the repr goes
        # into shell reproduction commands inside single quotes.
        parts = []
        for f in dataclasses.fields(self):
            val = getattr(self, f.name)
            if f.name in ("B", "H", "Hkv", "L", "S", "E", "Ev", "dtype", "seed") or val != f.default:
                parts.append(f"{f.name}={json.dumps(val) if isinstance(val, str) else repr(val)}")
        return f"Case({', '.join(parts)})"

    # --- derived -------------------------------------------------------------------------
    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def enable_gqa(self) -> bool:
        return self.H != self.Hkv

    def replace(self, **kw) -> "Case":
        return dataclasses.replace(self, **kw)

    def short(self) -> str:
        m = "no mask" if self.mask == "none" else (
            "is_causal" if self.mask == "is_causal" else f"{self.mask} mask {self.mask_shape}")
        extra = []
        if self.alibi:
            extra.append("ALiBi")
        if self.scale is not None:
            extra.append(f"scale={self.scale:g}")
        if self.mask_bias:
            extra.append(f"full-precision mask bias ~{self.mask_bias:g}")
        if self.enable_gqa:
            extra.append(f"GQA {self.H}/{self.Hkv}")
        if self.magnitude != 1.0:
            extra.append(f"|logit|~{self.magnitude:g}" if self.activations is None else f"q x{self.magnitude:g}")
        if self.activations is not None:
            extra.append(f"real MiniLM activations, layer {self.activations}")
        if self.layout != "contiguous":
            extra.append(f"layout {self.layout}")
        if self.activations is None and marked_keys(self.S):
            extra.append(f"values zero but one-hot markers at keys {','.join(map(str, marked_keys(self.S)))}")
        return (f"B={self.B} H={self.H} L={self.L} S={self.S} E={self.E} Ev={self.Ev} {self.dtype} "
                f"{self.policy} via {m}" + (" " + " ".join(extra) if extra else "") + f" seed={self.seed}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # --- tensors -------------------------------------------------------------------------
    def visible(self) -> torch.Tensor:
        """The truth: which keys each (b, h, query) may read, (B, H, L, S) bool."""
        pol = M.from_spec(self.policy)
        if self.mask == "is_causal":
            pol = M.causal(0 if self.alignment == "top_left" else self.S - self.L)
        return M.render(pol, self.B, self.H, self.L, self.S, device=self.device)

    def materialize(self) -> "Inputs":
        dt = self.torch_dtype
        if self.activations is not None:
            q, k, v = activations.qkv(self.activations, self.B, self.H, self.L, self.S, self.E, self.Ev)
            q = q * self.magnitude  # 1.0: the model's own logits
        else:
            g = torch.Generator().manual_seed(self.seed)
            q = torch.randn(self.B, self.H, self.L, self.E, generator=g)
            k = torch.randn(self.B, self.Hkv, self.S, self.E, generator=g)
            v = torch.randn(self.B, self.Hkv, self.S, self.Ev, generator=g)
            # Logits ~ magnitude: q.k has spread sqrt(E); the softmax scale divides that back out
            # (down to MIN_DIVIDED_SCALE).
            sc = abs(self.scale) if self.scale else 1.0 / math.sqrt(self.E)
            q = q * (self.magnitude / (max(sc, MIN_DIVIDED_SCALE) * math.sqrt(self.E)))
            marked = marked_keys(self.S)
            if marked:
                v.zero_()
                for i, pos in enumerate(marked):
                    v[:, :, pos, i % self.Ev] = MARKER_VALUE
        visible = self.visible()
        mask = self._mask_tensor(visible, dt)
        dev = self.device
        return Inputs(self, q.to(dt).to(dev), k.to(dt).to(dev), v.to(dt).to(dev), mask,
                      self.mask == "is_causal", self.scale, self.enable_gqa, visible)

    def _mask_tensor(self, visible: torch.Tensor, dt) -> Optional[torch.Tensor]:
        if self.mask in ("none", "is_causal"):
            return None
        sl = {"LS": (0, 0), "B11S": (slice(None), slice(0, 1), slice(0, 1)),
              "B1LS": (slice(None), slice(0, 1)), "BHLS": (), "1H1S": (slice(0, 1), slice(None), slice(0, 1)),
              "1HLS": (slice(0, 1),)}[self.mask_shape]
        m = visible[sl] if sl else visible
        if self.mask == "bool":
            return m.contiguous()
        f = torch.zeros(m.shape, dtype=dt, device=visible.device).masked_fill(~m, float("-inf"))
        if self.alibi:
            slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / self.H) for h in range(self.H)])
            dist = (torch.arange(self.L).view(-1, 1) - torch.arange(self.S).view(1, -1)).abs()
            bias = (-slopes.view(self.H, 1, 1) * dist).to(dt).to(visible.device)
            f = f + bias  # shapes 1HLS / BHLS carry both head and query
        if self.mask_bias:
            f = f + self._bias(f.shape).to(dt).to(visible.device)
        return f.contiguous()

    def _bias(self, shape) -> torch.Tensor:
        """The finite part of a float mask in the ``mask_bias`` region: per mask row an offset in
        [-1.25, 0.25] x mask_bias (ALiBi at long distances reaches -1e4; past -1e4 a kernel that
        stands -1e4 in for -inf lets masked keys in) plus N(0, 1) per entry, drawn in float64 so
        every entry uses the dtype's whole mantissa: a mask kept in a narrower dtype than the
        query's is then wrong in every row."""
        g = torch.Generator().manual_seed(self.seed ^ 0x5EED)
        offset = torch.empty(*shape[:-1], 1, dtype=torch.float64).uniform_(-0.25, 1.25, generator=g)
        return -self.mask_bias * offset + torch.randn(*shape, generator=g, dtype=torch.float64)

    # --- fitting to an implementation ----------------------------------------------------
    def fit(self, caps, dtype: str, device: str) -> Optional["Case"]:
        """This case moved inside ``caps`` (dtype, device, GQA, head dims, mask kind, causal
        alignment), or None when it cannot be expressed there."""
        c = self.replace(dtype=dtype, device=device)
        pol = M.from_spec(c.policy)
        n = pol.length
        if n is not None and (c.L, c.S) != (n, n):
            raise ValueError(f"{c.policy} describes {n} tokens but the case has L={c.L}, S={c.S}")
        if pol.keys is not None and c.S != pol.keys:
            raise ValueError(f"{c.policy} describes {pol.keys} keys but the case has S={c.S}")
        if not getattr(caps, "cross_attention", True) and c.L != c.S:
            c = c.replace(L=c.S)  # self-attention only; policies free in L (padding, causal) hold at any L
        lay = parse_layout(c.layout)
        if lay["kv"] == "broadcast":
            if c.H > 1:
                c = c.replace(Hkv=1)  # MQA: one kv head, handed over expanded to H heads
            else:
                c = c.replace(layout=layout_spec({**lay, "kv": "contiguous"}))
        if c.enable_gqa and not caps.gqa and lay["kv"] != "broadcast":
            c = c.replace(Hkv=c.H)
        if not caps.head_dim_ok(c.E):
            allowed = sorted(caps.head_dims or [e for e in (8, 16, 32, 64, 128) if caps.head_dim_ok(e)])
            if not allowed:
                return None
            c = c.replace(E=min(allowed, key=lambda e: abs(e - c.E)))
        if c.Ev != c.E and (not caps.value_dim_differs or not caps.head_dim_ok(c.Ev)):
            c = c.replace(Ev=c.E)
        if caps.max_seq_len is not None and max(c.L, c.S) > caps.max_seq_len:
            return None
        if c.scale is not None and c.scale <= 0 and not getattr(caps, "nonpositive_scale", True):
            return None
        if c.mask == "is_causal":
            if caps.causal is None:
                return None
            c = c.replace(alignment=caps.causal)
        elif c.mask != "none" and c.mask not in caps.mask_kinds:
            other = [k for k in ("bool", "float") if k in caps.mask_kinds]
            if other:
                c = c.replace(mask=other[0], alibi=False)
            elif c.policy == "causal()" and caps.causal == "top_left":
                c = c.replace(mask="is_causal", alignment="top_left")
            elif c.policy == "causal()" and caps.causal == "bottom_right" and c.L == c.S:
                c = c.replace(mask="is_causal", alignment="bottom_right")
            else:
                return None
        if c.mask == "none" and c.policy != "full()":
            return None
        if c.mask != "float" and c.mask_bias:
            c = c.replace(mask_bias=0.0)  # only a float mask carries a bias
        if caps.fully_masked_rows is None and not bool(c.visible().any(-1).all()):
            return None
        shape = lambda x: (x.B, x.H, x.Hkv, x.L, x.S, x.E, x.Ev)  # noqa: E731
        if c.activations is not None and shape(c) != shape(self):
            return None  # real activations have the shape they were captured with
        return c


@dataclass
class Inputs:
    """The tensors of one case, and the truth about which keys each row may read."""

    case: Case
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attn_mask: Optional[torch.Tensor]
    is_causal: bool
    scale: Optional[float]
    enable_gqa: bool
    visible: torch.Tensor  # (B, H, L, S) bool

    def replace(self, **kw) -> "Inputs":
        return dataclasses.replace(self, **kw)

    def kwargs(self) -> dict:
        return dict(attn_mask=self.attn_mask, is_causal=self.is_causal, scale=self.scale,
                    enable_gqa=self.enable_gqa)

    def laid_out(self, q, k, v, kw: dict):
        """(q, k, v, kwargs) in this case's memory layout: what the kernel is called with.
        Probes pass their replaced (logical, contiguous) tensors through here, so a perturbed or
        one-hot call keeps the layout of the case it perturbs."""
        q, k, v, mask, gqa = apply_layout(self.case.layout, q, k, v, kw.get("attn_mask"))
        kw = {**kw, "attn_mask": mask}
        if gqa is not None:
            kw["enable_gqa"] = gqa
        return q, k, v, kw

    def reference(self, **kw) -> torch.Tensor:
        return attention_reference(self.q, self.k, self.v, causal_alignment=self.case.alignment,
                                   **{**self.kwargs(), **kw})

    def value_scale(self) -> torch.Tensor:
        """(B, H, L) the row's natural error scale: sum_j w_j |v_j| (its largest column). Rounding
        in a weighted average is relative to the values averaged, not to the (possibly cancelled)
        result."""
        return attention_reference(self.q, self.k, self.v.detach().abs(), causal_alignment=self.case.alignment,
                                   **self.kwargs()).amax(dim=-1)

    def logit_absmax(self, chunk: int = 1024) -> torch.Tensor:
        """(B, H, L) largest |scaled logit + float mask| over each row's visible keys."""
        from harness.reference import _expand_mask, _gqa_expand

        q = self.q.detach().double()
        k = _gqa_expand(self.k.detach().double(), q.shape[1], True)
        B, H, L, E = q.shape
        S = k.shape[-2]
        sc = (1.0 / math.sqrt(E)) if self.scale is None else float(self.scale)
        fm = self.attn_mask if self.attn_mask is not None and self.attn_mask.dtype != torch.bool else None
        fm = _expand_mask(fm, B, H, L, S)
        out = torch.zeros(B, H, L, dtype=torch.float64, device=q.device)
        for s0 in range(0, S, chunk):
            s1 = min(S, s0 + chunk)
            lg = torch.matmul(q, k[:, :, s0:s1].transpose(-1, -2)) * sc
            if fm is not None:
                lg = lg + fm[..., s0:s1].double()
            lg = torch.where(self.visible[..., s0:s1].to(lg.device) & torch.isfinite(lg), lg.abs(), torch.zeros_like(lg))
            out = torch.maximum(out, lg.amax(-1))
        return out

    def baseline(self) -> torch.Tensor:
        return attention_naive(self.q, self.k, self.v, causal_alignment=self.case.alignment, **self.kwargs())

    @property
    def has_visible(self) -> torch.Tensor:
        """(B, H, L) rows with at least one visible key."""
        return self.visible.any(dim=-1)

    def kv_visible(self) -> torch.Tensor:
        """(B, Hkv, L, S): per kv head, which keys some query head of its group may read (the
        query heads that share a kv head folded together)."""
        B, H, L, S = self.visible.shape
        Hkv = self.case.Hkv
        return self.visible.view(B, Hkv, H // Hkv, L, S).any(dim=2)


def real_case(layer: int, policy: str = "padding", **kw) -> Case:
    """A Case on real activations (:mod:`harness.activations`): ``policy="padding"`` is the
    model's own key padding (bool, (B, 1, 1, S)), as the model ran it; any other policy spec
    applies that pattern instead."""
    a = activations
    fields = dict(B=a.B, H=a.H, Hkv=a.H, L=a.S, S=a.S, E=a.E, Ev=a.E, activations=layer)
    if policy == "padding":
        fields.update(policy=f"key_padding({a.padding_lengths()})", mask="bool", mask_shape="B11S")
    else:
        fields.update(policy=policy)
    fields.update(kw)
    return Case(**fields)


def base_case() -> Case:
    """The smallest unmasked case: correctness::test_base_case, and the call that decides whether
    a kernel can run at all (:mod:`harness.preload`)."""
    return Case(B=1, H=1, Hkv=1, L=4, S=4, E=16, Ev=16)
