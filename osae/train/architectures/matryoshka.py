"""Matryoshka SAEs (Bussmann et al. 2025; Nabeshima; methods.md 2.4-2.5), on BatchTopK by default.

One code over the whole dictionary (selected once, shared by all levels), truncated per level:
    x_hat_{<=M} = b_dec + sum_{j <= M} z_j d_j
    L = sum_g c_g ||x - x_hat_{<=M_g}||^2 + alpha L_aux        (c_g = 1/G: dictionary_learning's weights)
`matryoshka`: fixed cumulative widths M_1 < ... < M_G = K (default K/16, K/8, K/4, K/2, K).
`matryoshka-random`: every step draws G-1 distinct interior boundaries from q(b) ∝ (b - b_min + 1)^0.5 -
(b - b_min)^0.5, shared by the batch, plus K. Each level is one extra sparse decode (cheap next to the
encoder); `selection="token"` uses per-token TopK instead of BatchTopK.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from osae.distributed import SINGLE
from osae.errors import UsageError
from osae.train.architectures.base import ForwardOutput, StepContext, aux_k_loss
from osae.train.architectures.batchtopk import BatchTopKConfig, BatchTopKSAE
from osae.train.architectures.selection import topk_code
from osae.train.prefix import default_widths, sample_boundaries

ARCHITECTURE = "matryoshka"
ARCHITECTURE_RANDOM = "matryoshka-random"


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    widths: list[int] | None = None
    """Cumulative level widths ending at d_sae; None: d_sae/16, /8, /4, /2, d_sae."""
    level_weights: list[float] | None = None
    """c_g per level; None: equal, 1/G."""
    selection: str = "batch"
    """batch (BatchTopK, the default) or token (per-token TopK)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.widths is None:
            self.widths = default_widths(self.d_sae)
        w = list(self.widths)
        if w != sorted(set(w)) or w[-1] != self.d_sae or w[0] < 1:
            raise UsageError(f"widths must be increasing and end at d_sae={self.d_sae}; got {w}")
        if self.level_weights is not None and len(self.level_weights) != len(w):
            raise UsageError(f"level_weights needs one weight per width ({len(w)}); got {len(self.level_weights)}")
        _check_selection(self.selection)

    def saelens_architecture(self) -> str:
        return _selection_saelens(self.selection)


@dataclass
class MatryoshkaRandomConfig(BatchTopKConfig):
    groups: int = 5
    """G: prefixes per step (G-1 sampled boundaries plus d_sae)."""
    b_min: int = 1
    """Smallest boundary."""
    power: float = 0.5
    """Exponent of the boundary law."""
    selection: str = "batch"
    """batch (BatchTopK, the default) or token (per-token TopK)."""
    reorder_ema: float | None = None
    """When set (Nabeshima's recipe uses 0.95): after every update, re-sort latents by decreasing EMA of
    E[z_j^2] (atoms are unit norm, so E[(z_j ||d_j||)^2]), with the optimizer state."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reorder_ema is not None and not 0 < self.reorder_ema < 1:
            raise UsageError(f"reorder_ema must be in (0, 1); got {self.reorder_ema}")
        if not 1 <= self.groups <= self.d_sae:
            raise UsageError(f"groups must be in [1, d_sae={self.d_sae}]; got {self.groups}")
        if not 1 <= self.b_min < self.d_sae:
            raise UsageError(f"b_min must be in [1, d_sae={self.d_sae}); got {self.b_min}")
        _check_selection(self.selection)

    def saelens_architecture(self) -> str:
        return _selection_saelens(self.selection)


def _check_selection(selection: str) -> None:
    if selection not in ("batch", "token"):
        raise UsageError(f"selection must be batch or token; got {selection!r}")


def _selection_saelens(selection: str) -> str:
    # Per-token TopK codes are SAELens' topk; BatchTopK codes, evaluated with the global threshold, a JumpReLU.
    return "topk" if selection == "token" else "jumprelu"


class MatryoshkaSAE(BatchTopKSAE):
    ARCHITECTURE = ARCHITECTURE

    def levels(self, step: int) -> tuple[list[int], np.ndarray]:
        w = list(self.cfg.widths)
        c = np.asarray(self.cfg.level_weights or [1.0 / len(w)] * len(w), dtype=np.float64)
        return w, c

    def train_code(self, pre_BF, collective=SINGLE, k: int | None = None):
        if self.cfg.selection == "token":
            return topk_code(pre_BF, self.cfg.k if k is None else k)
        return super().train_code(pre_BF, collective, k)

    def encode(self, x_BD):
        if self.cfg.selection == "token":
            return topk_code(self.pre_acts(x_BD), self.cfg.k)
        return super().encode(x_BD)

    def forward(self, x_BD: torch.Tensor, ctx: StepContext | None = None) -> ForwardOutput:
        ctx = ctx or StepContext()
        pre = self.train_pre_acts(x_BD)
        code = self.train_code(pre, ctx.collective, self.cfg.k_at(ctx.step))
        widths, weights = self.levels(ctx.step)
        r = x_BD - self.b_dec
        prefixes = code.decode_nested(self.W_dec, widths)  # each entry decoded once, in its band
        mse = sum(float(c) * ((r - p) ** 2).sum(1).mean() for c, p in zip(weights, prefixes))
        recon = prefixes[-1] + self.b_dec
        losses = {"mse": mse, "auxk": aux_k_loss(self, x_BD, recon, pre, ctx.dead_F, ctx.collective)}
        stats = self.threshold_stats(code) if self.cfg.selection == "batch" else {}
        return ForwardOutput(recon, code, losses, stats=stats)

    def update_statistics(self, stats, step: int) -> None:
        if "min_kept" in stats:
            self.update_threshold(stats["min_kept"], step)


class MatryoshkaRandomSAE(MatryoshkaSAE):
    ARCHITECTURE = ARCHITECTURE_RANDOM

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.reorder_ema is not None:  # only then: checkpoints without the option keep their state dict
            self.register_buffer("importance_ema", torch.zeros(cfg.d_sae))

    def forward(self, x_BD: torch.Tensor, ctx: StepContext | None = None) -> ForwardOutput:
        out = super().forward(x_BD, ctx)
        if self.cfg.reorder_ema is not None:
            out.stats["sum_sq"] = ("sum", out.code.sum_sq(self.cfg.d_sae).float())
            out.stats["tokens"] = ("sum", x_BD.new_tensor(float(len(x_BD))))
        return out

    @torch.no_grad()
    def update_statistics(self, stats, step: int) -> None:
        super().update_statistics(stats, step)
        if self.cfg.reorder_ema is not None:
            b = self.cfg.reorder_ema
            self.importance_ema.mul_(b).add_((1 - b) * stats["sum_sq"] / stats["tokens"])

    def permutation_due(self, steps: range) -> torch.Tensor | None:
        if self.cfg.reorder_ema is None:
            return None
        return torch.sort(-self.importance_ema, stable=True).indices  # ties: lower index first

    def latent_buffers(self) -> list[str]:
        return ["importance_ema"] if self.cfg.reorder_ema is not None else []

    def levels(self, step: int) -> tuple[list[int], np.ndarray]:
        # A fresh draw every step, reproducible from (seed, step): resumes see the same boundaries.
        rng = np.random.default_rng([int(getattr(self, "seed", 0)), int(step), 0xB0])
        b = sample_boundaries(rng, self.cfg.d_sae, self.cfg.groups, self.cfg.b_min, self.cfg.power)
        return [int(x) for x in b], np.full(len(b), 1.0 / len(b))
