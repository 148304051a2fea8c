"""TopK SAE with the AuxK dead-latent loss (Gao et al. 2024; methods.md 2.2).

z = TopK_k(ReLU(W_enc (x - b_dec) + b_enc)) per token;  L = ||x - x_hat||^2 + alpha * L_aux.
Optionally (k_init, k_warmup_steps) training starts with a larger k that falls linearly to k, as OSAE's
warm-up does; inference always keeps k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from osae.train.architectures.base import SAE, ForwardOutput, KWarmupConfig, StepContext, aux_k_loss
from osae.train.architectures.selection import topk_code

ARCHITECTURE = "topk"


@dataclass
class TopKConfig(KWarmupConfig):
    pass


class TopKSAE(SAE):
    ARCHITECTURE = ARCHITECTURE

    def encode(self, x_BD):
        return topk_code(self.pre_acts(x_BD), self.cfg.k)

    def forward(self, x_BD: torch.Tensor, ctx: StepContext | None = None) -> ForwardOutput:
        ctx = ctx or StepContext()
        pre = self.train_pre_acts(x_BD)
        code = topk_code(pre, self.cfg.k_at(ctx.step))
        recon = self.decode(code)
        losses = {
            "mse": ((recon - x_BD) ** 2).sum(1).mean(),
            "auxk": aux_k_loss(self, x_BD, recon, pre, ctx.dead_F, ctx.collective),
        }
        return ForwardOutput(recon, code, losses)
