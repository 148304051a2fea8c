"""ReLU SAE with an L1 penalty (methods.md 2.1): z = ReLU(pre), L = ||x - x_hat||^2 + lambda ||z||_1, atoms
kept at unit norm so the penalty cannot be dodged by shrinking codes. lambda ramps up linearly over the
first `l1_warmup_steps` steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from osae.train.architectures.base import SAE, ForwardOutput, SAEConfig

ARCHITECTURE = "relu"


@dataclass
class ReLUConfig(SAEConfig):
    uses_k: ClassVar[bool] = False
    l1_coef: float = 5.0
    """lambda, in units of the per-token squared error (activations normalised to E||x||^2 = d_in)."""
    l1_warmup_steps: int = 2000
    """Steps over which lambda ramps from 0."""


class ReLUSAE(SAE):
    ARCHITECTURE = ARCHITECTURE

    def encode(self, x_BD):
        return torch.relu(self.pre_acts(x_BD))

    def l1_weight(self, step: int) -> float:
        ramp = min(1.0, step / self.cfg.l1_warmup_steps) if self.cfg.l1_warmup_steps else 1.0
        return self.cfg.l1_coef * ramp

    def forward(self, x_BD: torch.Tensor, step: int = 0, **state) -> ForwardOutput:
        z = torch.relu(self.pre_acts(x_BD))
        recon = self.decode(z)
        losses = {"mse": ((recon - x_BD) ** 2).sum(1).mean(), "l1": self.l1_weight(step) * z.sum(1).mean()}
        return ForwardOutput(recon, z, losses)
