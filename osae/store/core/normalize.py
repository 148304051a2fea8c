"""Activation normalization: none, one scalar (E||s x||^2 = d_model, as SAELens does), or per-dimension
standardization from the store's running statistics. Recorded in every checkpoint and invertible, so
metrics can be reported in the store's original units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from osae.errors import UsageError
from osae.store.core.reader import ActivationStore

NORMALIZATIONS = ("none", "scalar", "standardize")


@dataclass
class Normalizer:
    """y = (x - shift) * scale, with a scalar or per-dimension scale and shift."""

    kind: str = "none"
    scale: list[float] | float = 1.0
    shift: list[float] | float = 0.0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in NORMALIZATIONS:
            raise UsageError(f"normalization must be one of {NORMALIZATIONS}; got {self.kind!r}")

    @classmethod
    def from_store(cls, store: ActivationStore, hook: str, kind: str) -> Normalizer:
        if kind == "none":
            return cls("none")
        stats = store.stats(hook)
        if stats["count"] == 0:
            raise UsageError(f"{store.loc.display} has no statistics for '{hook}' (no committed rows)")
        if kind == "scalar":
            return cls("scalar", scale=float(np.sqrt(store.d_model(hook) / stats["mean_sq_norm"])))
        std = np.sqrt(stats["var"])
        inv = np.where(std > 0, 1.0 / np.maximum(std, 1e-30), 1.0)
        return cls("standardize", scale=inv.tolist(), shift=stats["mean"].tolist())

    def _tensors(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = (
                torch.as_tensor(self.scale, dtype=dtype, device=device),
                torch.as_tensor(self.shift, dtype=dtype, device=device),
            )
        return self._cache[key]

    def into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Normalize `x` (any float dtype) into the preallocated `out`, converting dtype on the way."""
        if self.kind == "none":
            return out.copy_(x)
        scale, shift = self._tensors(out.device, out.dtype)
        # Convert first: torch.mul(x, 0-dim scale, out=...) would compute in x's dtype (float16 rows would be
        # scaled in float16, rounding away ~2^-11 of every value) and only then cast to out's.
        out.copy_(x)
        if self.kind == "scalar":
            return out.mul_(scale)
        return out.sub_(shift).mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.into(
            x,
            torch.empty(
                x.shape,
                dtype=torch.float32 if not x.is_floating_point() or x.element_size() < 4 else x.dtype,
                device=x.device,
            ),
        )

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Back to the store's units."""
        if self.kind == "none":
            return y
        scale, shift = self._tensors(y.device, y.dtype)
        return y / scale + shift

    def to_dict(self) -> dict:
        return {"kind": self.kind, "scale": self.scale, "shift": self.shift}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(d.get("kind", "none"), d.get("scale", 1.0), d.get("shift", 0.0))
