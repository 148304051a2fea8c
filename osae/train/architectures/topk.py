"""TopK SAE with the AuxK dead-latent loss (Gao et al. 2024; methods.md 2.2).

z = TopK_k(ReLU(W_enc (x - b_dec) + b_enc)) per token;  L = ||x - x_hat||^2 + alpha * L_aux.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from osae.train.architectures.base import SAE, ForwardOutput, SAEConfig, StepContext, aux_k_loss, topk_code

ARCHITECTURE = "topk"


@dataclass
class TopKConfig(SAEConfig):
    pass


class TopKSAE(SAE):
    ARCHITECTURE = ARCHITECTURE

    def encode(self, x_BD):
        return topk_code(self.pre_acts(x_BD), self.cfg.k)

    def forward(self, x_BD: torch.Tensor, ctx: StepContext | None = None) -> ForwardOutput:
        ctx = ctx or StepContext()
        pre = self.pre_acts(x_BD)
        code = topk_code(pre, self.cfg.k)
        recon = self.decode(code)
        losses = {
            "mse": ((recon - x_BD) ** 2).sum(1).mean(),
            "auxk": aux_k_loss(self, x_BD, recon, pre, ctx.dead_F, ctx.collective),
        }
        return ForwardOutput(recon, code, losses, pre)
