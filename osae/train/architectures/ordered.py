"""Ordered SAE (Wang, Quach, Parsan, Yang, "Enforcing Orderedness (in SAEs) to Improve Feature Consistency";
methods.md 2.6 and 3).

z = Top_{k_t}(ReLU(pre)) per token (selection over the whole dictionary, never re-selected in a prefix).
    L = E_{l ~ p_ND} ||x - b_dec - D Lambda_l z||^2  (+ alpha L_aux)
computed exactly per token from the inclusion weights pi_j = P(l >= j) (osae.train.ordered_loss), or, as
the paper's ablation, by sampling one l per token (`estimator="sample"`).
k warm-up: k_t = round(K - (K - m) t / W) for t < W, then m. Unit sweeping (Rippel et al.): after
`sweep_start` steps, one more leading unit is frozen every `sweep_every` steps; frozen units keep their
parameters (gradients and Adam moments zeroed, values restored after each step) but stay in the top-k
competition, and pi is re-based on the unfrozen tail: pi'_j = 1 for j <= f + 1, pi_j / pi_{f+1} beyond.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from osae.errors import UsageError
from osae.train.architectures.base import SAE, ForwardOutput, KWarmupConfig, StepContext, aux_k_loss
from osae.train.architectures.codes import SparseCode
from osae.train.architectures.selection import DENSE_BACKWARD_SHARE, topk_code
from osae.train.ordered_loss import ordered_loss_dense, ordered_loss_sparse
from osae.train.prefix import LAWS, inclusion_weights

ARCHITECTURE = "osae"


@dataclass
class OrderedConfig(KWarmupConfig):
    prefix_law: str = "uniform"
    """Prefix-length law p_ND: uniform, geometric, zipf, piecewise, matryoshka-marginal or custom."""
    prefix_rho: float = 0.999
    """Geometric ratio."""
    prefix_alpha: float = 1.2
    """Zipf exponent."""
    prefix_widths: list[int] | None = None
    """Piecewise: group boundaries (default d_sae/16 ... d_sae)."""
    prefix_groups: int = 5
    """matryoshka-marginal: G."""
    prefix_custom: list[float] | None = None
    """custom: the pmf over 1..d_sae."""
    prefix_full_mass: float = 0.0
    """Extra probability of the whole dictionary (L = d_sae), mixed into the law: pi_j -> (1 - m) pi_j + m."""
    estimator: str = "exact"
    """exact (closed form over all prefixes) or sample (one prefix per token, the paper's form)."""
    step_settings: ClassVar[dict] = {"k_warmup_steps": None, "sweep_start": None}
    sweep_start: int | None = None
    """Step at which unit sweeping starts (None: no sweeping)."""
    sweep_every: int = 1
    """Steps between two freezes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prefix_law not in LAWS:
            raise UsageError(f"prefix_law must be one of {LAWS}; got {self.prefix_law!r}")
        if self.estimator not in ("exact", "sample"):
            raise UsageError(f"estimator must be exact or sample; got {self.estimator!r}")
        if not 0.0 <= self.prefix_full_mass <= 1.0:
            raise UsageError(f"prefix_full_mass must be in [0, 1]; got {self.prefix_full_mass}")
        if self.sweep_every <= 0:
            raise UsageError(f"sweep_every must be positive; got {self.sweep_every}")


class OrderedSAE(SAE):
    ARCHITECTURE = ARCHITECTURE

    def __init__(self, cfg: OrderedConfig):
        super().__init__(cfg)
        pi = inclusion_weights(
            cfg.prefix_law,
            cfg.d_sae,
            rho=cfg.prefix_rho,
            alpha=cfg.prefix_alpha,
            widths=cfg.prefix_widths,
            groups=cfg.prefix_groups,
            custom=cfg.prefix_custom,
        )
        pi = (1.0 - cfg.prefix_full_mass) * pi + cfg.prefix_full_mass
        self.register_buffer("pi", pi.float())
        self.register_buffer("n_frozen", torch.tensor(0, dtype=torch.long))

    # -- schedules --------------------------------------------------------------------------------
    def k_at(self, step: int) -> int:
        return self.cfg.k_at(step)

    def frozen_units(self, step: int) -> int:
        cfg = self.cfg
        if cfg.sweep_start is None or step < cfg.sweep_start:
            return 0
        return min(cfg.d_sae - 1, (step - cfg.sweep_start) // cfg.sweep_every + 1)

    def update_statistics(self, stats, step: int) -> None:
        # Recorded so that a frozen checkpoint says how many units were swept when it was written.
        self.n_frozen.fill_(self.frozen_units(step))

    def effective_pi(self, f: int | None = None) -> torch.Tensor:
        """pi re-based on the unfrozen tail; `f` frozen units (None: the recorded n_frozen)."""
        f = int(self.n_frozen) if f is None else f
        if f == 0:
            return self.pi
        pi = self.pi / self.pi[f].clamp_min(1e-12)  # re-based on the unfrozen tail (pi[f] is unit f+1)
        pi[: f + 1] = 1.0
        return pi.clamp_max(1.0)

    # -- forward ----------------------------------------------------------------------------------
    def encode(self, x_BD):
        return topk_code(self.pre_acts(x_BD), self.cfg.k)

    def forward(self, x_BD: torch.Tensor, ctx: StepContext | None = None) -> ForwardOutput:
        ctx = ctx or StepContext()
        pre = self.train_pre_acts(x_BD)
        k = self.k_at(ctx.step)
        r = x_BD - self.b_dec
        pi = self.effective_pi(self.frozen_units(ctx.step))
        code = topk_code(pre, k)
        if self.cfg.estimator == "sample":
            # One prefix length per token, P(L >= j) = pi_j: L is the number of pi_j above a uniform draw.
            # Every process draws the whole batch's uniforms and keeps its slice: any process count, one stream.
            c, b = ctx.collective, len(x_BD)
            u = torch.rand(b * c.world, generator=ctx.generator, device=x_BD.device)[c.rank * b : (c.rank + 1) * b]
            # pi is non-increasing: the count of pi_j > u is K minus the count of pi_j <= u in ascending order
            L = len(pi) - torch.searchsorted(pi.flip(0).contiguous(), u, right=True)
            kept = SparseCode(code.idx, code.vals * (code.idx < L[:, None]))
            nd = ((r - self.decode(kept, bias=False)) ** 2).sum(1).mean()
        elif k > DENSE_BACKWARD_SHARE * self.cfg.d_sae:
            # Early in the warm-up codes are nearly dense: one F x F matrix beats per-token Gram blocks.
            nd = ordered_loss_dense(r, code.dense(self.cfg.d_sae), self.W_dec, pi).mean()
        else:
            nd = ordered_loss_sparse(r, code.vals, code.idx, self.W_dec, pi).mean()
        recon = self.decode(code)
        auxk = aux_k_loss(self, x_BD, recon, pre, ctx.dead_F, ctx.collective)
        return ForwardOutput(recon, code, {"nd": nd, "auxk": auxk})
