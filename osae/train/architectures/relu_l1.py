"""ReLU SAE with an L1 penalty (methods.md 2.1): z = ReLU(pre), L = ||x - x_hat||^2 + lambda ||z||_1, atoms
kept at unit norm so the penalty cannot be dodged by shrinking codes. lambda ramps up linearly over the
first `l1_warmup_steps` steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from osae.train.architectures.base import SAE, ForwardOutput, SAEConfig, StepContext
from osae.train.architectures.codes import DenseCode

ARCHITECTURE = "relu"


@dataclass
class ReLUConfig(SAEConfig):
    uses_k: ClassVar[bool] = False
    saelens: ClassVar[str] = "standard"
    l1_coef: float = 5.0
    """lambda, in units of the per-token squared error (activations normalised to E||x||^2 = d_in)."""
    l1_warmup_steps: int | None = None
    """Steps over which lambda ramps from 0 (None: 5% of the run, at most 2000)."""
    step_settings: ClassVar[dict] = {"l1_warmup_steps": (0.05, 2000)}


class ReLUSAE(SAE):
    ARCHITECTURE = ARCHITECTURE

    def encode(self, x_BD):
        return DenseCode(torch.relu(self.pre_acts(x_BD)))

    def l1_weight(self, step: int) -> float:
        ramp = min(1.0, step / self.cfg.l1_warmup_steps) if self.cfg.l1_warmup_steps else 1.0
        return self.cfg.l1_coef * ramp

    def forward(self, x_BD: torch.Tensor, ctx: StepContext | None = None) -> ForwardOutput:
        ctx = ctx or StepContext()
        z = torch.relu(self.pre_acts(x_BD))
        code = DenseCode(z)
        recon = self.decode(code)
        losses = {"mse": ((recon - x_BD) ** 2).sum(1).mean(), "l1": self.l1_weight(ctx.step) * z.sum(1).mean()}
        return ForwardOutput(recon, code, losses)
