"""BatchTopK SAE (Bussmann, Leask, Nanda 2024; methods.md 2.3).

Training keeps the k * B largest ReLU'd pre-activations of the whole batch (mean L0 = k). Inference uses
one threshold theta, an EMA of the smallest kept activation per batch (time constant `threshold_window`
steps, from step `threshold_start`; both a tenth of the run, at most 1000, so beta = 0.999 on long runs):
z_j = pre_j * 1[pre_j > theta]. L = ||x - x_hat||^2 + alpha * L_aux. With a k warm-up (k_init,
k_warmup_steps) the batch keeps k_t * B entries, and the threshold is tracked only once k_t = k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from osae.distributed import SINGLE, Collective
from osae.train.architectures.base import SAE, ForwardOutput, KWarmupConfig, StepContext, aux_k_loss
from osae.train.architectures.codes import SparseCode
from osae.train.architectures.selection import PreActs, batch_topk_code, threshold_code

ARCHITECTURE = "batchtopk"


@dataclass
class BatchTopKConfig(KWarmupConfig):
    threshold_window: int | None = None
    """Time constant in steps of the inference threshold's EMA, beta = 1 - 1/window (None: a tenth of the
    run, at most 1000). A fixed 0.999 barely moved in a 244-step run: the threshold stayed near its first
    value, and held-out L0 was half of k."""
    threshold_start: int | None = None
    """Training step from which the threshold is tracked (None: a tenth of the run, at most 1000)."""
    step_settings: ClassVar[dict] = {
        "threshold_start": (0.1, 1000),
        "threshold_window": (0.1, 1000),
        "k_warmup_steps": None,
    }
    saelens: ClassVar[str] = "jumprelu"  # one global threshold: z = pre * 1[pre > theta] is a JumpReLU


class BatchTopKSAE(SAE):
    ARCHITECTURE = ARCHITECTURE

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not yet estimated

    def encode(self, x_BD):
        pre = self.pre_acts(x_BD)
        if float(self.threshold) < 0:  # no threshold yet: fall back to the batch rule
            return batch_topk_code(pre, self.cfg.k)
        return threshold_code(pre, float(self.threshold))

    def train_code(
        self, pre_BF: torch.Tensor | PreActs, collective: Collective = SINGLE, k: int | None = None
    ) -> SparseCode:
        return batch_topk_code(pre_BF, self.cfg.k if k is None else k, collective)

    def forward(self, x_BD: torch.Tensor, ctx: StepContext | None = None) -> ForwardOutput:
        ctx = ctx or StepContext()
        pre = self.train_pre_acts(x_BD)
        code = self.train_code(pre, ctx.collective, self.cfg.k_at(ctx.step))
        recon = self.decode(code)
        losses = {
            "mse": ((recon - x_BD) ** 2).sum(1).mean(),
            "auxk": aux_k_loss(self, x_BD, recon, pre, ctx.dead_F, ctx.collective),
        }
        return ForwardOutput(recon, code, losses, stats=self.threshold_stats(code))

    @torch.no_grad()
    def threshold_stats(self, code: SparseCode) -> dict[str, tuple[str, torch.Tensor]]:
        """The smallest kept activation of this slice (+inf if none): its min over processes is the batch's."""
        pos = code.vals[code.vals > 0]
        smallest = pos.min() if pos.numel() else code.vals.new_tensor(float("inf"))
        return {"min_kept": ("min", smallest.detach().float())}

    def update_statistics(self, stats: dict[str, torch.Tensor], step: int) -> None:
        self.update_threshold(stats["min_kept"], step)

    @torch.no_grad()
    def update_threshold(self, m: torch.Tensor, step: int) -> None:
        """EMA of the batch's smallest kept activation `m`, from `threshold_start` on."""
        if step < max(self.cfg.threshold_start, self.cfg.k_warmup_steps) or not bool(torch.isfinite(m)):
            return
        if float(self.threshold) < 0:
            self.threshold.copy_(m)
        else:
            beta = 1 - 1 / self.cfg.threshold_window
            self.threshold.mul_(beta).add_((1 - beta) * m)

    def fold_scale_(self, s: float) -> None:
        super().fold_scale_(s)
        with torch.no_grad():
            if float(self.threshold) > 0:
                self.threshold /= s
