"""BatchTopK SAE (Bussmann, Leask, Nanda 2024; methods.md 2.3).

Training keeps the k * B largest ReLU'd pre-activations of the whole batch (mean L0 = k). Inference uses
one threshold theta, an EMA (beta = 0.999, from step 1000) of the smallest kept activation per batch:
z_j = pre_j * 1[pre_j > theta]. L = ||x - x_hat||^2 + alpha * L_aux.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from osae.train.architectures.base import (SAE, ForwardOutput, SAEConfig, aux_k_loss, batch_topk_code,
                                           threshold_code)

ARCHITECTURE = "batchtopk"


@dataclass
class BatchTopKConfig(SAEConfig):
    threshold_beta: float = 0.999
    """EMA factor of the inference threshold."""
    threshold_start: int = 1000
    """Training step from which the threshold is tracked."""


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

    def train_code(self, pre_BF: torch.Tensor):
        return batch_topk_code(pre_BF, self.cfg.k)

    def forward(self, x_BD: torch.Tensor, dead_F: torch.Tensor | None = None, step: int = 0, **state) -> ForwardOutput:
        pre = self.pre_acts(x_BD)
        code = self.train_code(pre)
        recon = self.decode(code)
        if self.training:
            self.update_threshold(code, step)
        losses = {"mse": ((recon - x_BD) ** 2).sum(1).mean(), "auxk": aux_k_loss(self, x_BD, recon, pre, dead_F)}
        return ForwardOutput(recon, code, losses, pre)

    @torch.no_grad()
    def update_threshold(self, code, step: int) -> None:
        if step < self.cfg.threshold_start:
            return
        pos = code.vals[code.vals > 0]
        if pos.numel() == 0:
            return
        m = pos.min()
        if float(self.threshold) < 0:
            self.threshold.copy_(m)
        else:
            self.threshold.mul_(self.cfg.threshold_beta).add_((1 - self.cfg.threshold_beta) * m)

    def fold_scale_(self, s: float) -> None:
        super().fold_scale_(s)
        with torch.no_grad():
            if float(self.threshold) > 0:
                self.threshold /= s
