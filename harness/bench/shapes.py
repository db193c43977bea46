"""Benchmark shapes: the Shape record, the presets (scaled down on CPU) and the ``--shapes`` syntax."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

CPU_CAPS = {"prefill_max_len": 2048, "decode_max_len": 16384, "B": 1, "H": 8}


@dataclass(frozen=True)
class Shape:
    mode: str  # "prefill" (L = S) | "decode" (L = 1)
    B: int
    H: int
    Hkv: int
    L: int
    S: int
    E: int
    causal: bool = False

    def __post_init__(self):
        if self.mode not in ("prefill", "decode"):
            raise ValueError(f"mode must be prefill or decode, not {self.mode!r}")
        if min(self.B, self.H, self.Hkv, self.L, self.S, self.E) < 1:
            raise ValueError(f"every dimension must be >= 1: {self}")
        if self.H % self.Hkv:
            raise ValueError(f"H={self.H} is not a multiple of Hkv={self.Hkv}")

    @property
    def gqa(self) -> bool:
        return self.H != self.Hkv

    def to_dict(self) -> dict:
        return {"B": self.B, "H": self.H, "Hkv": self.Hkv, "L": self.L, "S": self.S, "E": self.E,
                "causal": self.causal}

    def spec(self) -> str:
        """The LIST syntax that gives back this shape."""
        if self.mode == "prefill":
            dims = [self.B, self.H] + ([self.Hkv] if self.gqa else []) + [self.L, self.E]
            return "prefill:" + "x".join(map(str, dims)) + (":causal" if self.causal else "")
        return "decode:" + "x".join(map(str, (self.B, self.H, self.Hkv, self.S, self.E))) + (
            ":causal" if self.causal else "")

    def label(self) -> str:
        heads = f"H{self.H}" + (f"/{self.Hkv}" if self.gqa else "")
        if self.mode == "prefill":
            return f"prefill B{self.B} {heads} L=S={self.L} E{self.E}" + (" causal" if self.causal else "")
        return f"decode B{self.B} {heads} S={self.S} E{self.E}" + (" causal" if self.causal else "")

    def replace(self, **kw) -> "Shape":
        return dataclasses.replace(self, **kw)


def _prefill(B, H, Ls, Es, Hkv=None) -> list:
    return [Shape("prefill", B, H, Hkv or H, L, L, E, c) for L in Ls for E in Es for c in (False, True)]


def _decode(B, H, Hkv, Ss, E=128) -> list:
    return [Shape("decode", B, H, Hkv, 1, S, E, False) for S in Ss]


# Presets as they run on a GPU; on CPU they are scaled down by scale_for_cpu.
PRESETS = {
    "small": _prefill(2, 16, (512, 1024), (64,)) + _decode(4, 32, 8, (1024, 4096)),
    "default": _prefill(2, 16, (512, 2048, 8192, 16384), (64, 128)) + _decode(8, 32, 8, (1024, 8192, 32768, 131072)),
    "gpu-large": _prefill(4, 32, (512, 1024, 2048, 4096, 8192, 16384), (64, 128))
    + _decode(16, 32, 8, (1024, 4096, 16384, 65536, 131072)),
}


def scale_for_cpu(shape: Shape) -> Shape:
    """B=1, H=8 (GQA ratio kept for decode), L and S capped at 2048 for prefill, S at 16k for decode."""
    c = CPU_CAPS
    H = min(shape.H, c["H"])
    group = shape.H // shape.Hkv
    Hkv = max(1, H // group) if shape.gqa else H
    H = Hkv * group if shape.gqa else H
    if shape.mode == "prefill":
        L = min(shape.L, c["prefill_max_len"])
        S = min(shape.S, c["prefill_max_len"])
    else:
        L, S = shape.L, min(shape.S, c["decode_max_len"])
    return shape.replace(B=min(shape.B, c["B"]), H=H, Hkv=Hkv, L=L, S=S)


def _dedupe(shapes) -> list:
    return list(dict.fromkeys(shapes))


def parse_shape(item: str) -> Shape:
    """One LIST item: ``prefill:BxHxLxE``, ``prefill:BxHxHkvxLxE`` or ``decode:BxHxHkvxSxE``,
    optionally followed by ``:causal``."""
    parts = [p.strip() for p in item.strip().split(":")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "causal"):
        raise ValueError(f"bad shape {item!r}: expected MODE:DIMS[:causal], e.g. prefill:1x8x1024x64")
    mode, dims, causal = parts[0], parts[1], len(parts) == 3
    try:
        n = [int(x) for x in dims.lower().split("x")]
    except ValueError:
        raise ValueError(f"bad shape {item!r}: dimensions must be integers joined by 'x'") from None
    if mode == "prefill":
        if len(n) == 4:
            B, H, L, E = n
            Hkv = H
        elif len(n) == 5:
            B, H, Hkv, L, E = n
        else:
            raise ValueError(f"bad shape {item!r}: prefill takes BxHxLxE or BxHxHkvxLxE")
        return Shape("prefill", B, H, Hkv, L, L, E, causal)
    if mode == "decode":
        if len(n) != 5:
            raise ValueError(f"bad shape {item!r}: decode takes BxHxHkvxSxE")
        B, H, Hkv, S, E = n
        return Shape("decode", B, H, Hkv, 1, S, E, causal)
    raise ValueError(f"bad shape {item!r}: mode must be prefill or decode")


def parse_shapes(text: Optional[str], device: str = "cpu") -> list:
    """A preset name (scaled down on CPU) or a comma-separated LIST (used as given)."""
    text = (text or "default").strip()
    if text in PRESETS:
        shapes = PRESETS[text]
        if device != "cuda":
            shapes = [scale_for_cpu(s) for s in shapes]
        return _dedupe(shapes)
    items = [i for i in text.split(",") if i.strip()]
    if not items:
        raise ValueError("no shapes given")
    return _dedupe(parse_shape(i) for i in items)
