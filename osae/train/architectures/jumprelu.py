"""JumpReLU SAE, inference only (Rajamanoharan et al. 2024): z_j = pre_j * 1[pre_j > theta_j], one threshold
per latent, pre = W_enc (x - b_dec) + b_enc. Thresholds below 0 act as 0 (SAELens and dictionary_learning both
take the ReLU first). It is how SAELens saves BatchTopK and Matryoshka-BatchTopK SAEs for inference, and how
dictionary_learning's BatchTopK / JumpReLU dictionaries encode; osae reads those (osae.foreign) but does not
train JumpReLU SAEs, so `forward` refuses and the name is not among `osae fit --arch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from osae.errors import UsageError
from osae.train.architectures.base import SAE, ForwardOutput, SAEConfig, StepContext
from osae.train.architectures.codes import SparseCode, offsets_of

ARCHITECTURE = "jumprelu"


@dataclass
class JumpReLUConfig(SAEConfig):
    uses_k: ClassVar[bool] = False
    saelens: ClassVar[str] = "jumprelu"


def jumprelu_code(pre_BF: torch.Tensor, theta_F: torch.Tensor) -> SparseCode:
    """Every latent j whose pre-activation exceeds max(theta_j, 0), in flat form."""
    mask = pre_BF > theta_F.clamp_min(0)
    rows, idx = mask.nonzero(as_tuple=True)
    counts = mask.sum(1)
    offsets = offsets_of(counts)
    return SparseCode(idx, pre_BF[rows, idx], offsets)


class JumpReLUSAE(SAE):
    ARCHITECTURE = ARCHITECTURE

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(cfg.d_sae))  # (F,)

    def encode(self, x_BD):
        return jumprelu_code(self.pre_acts(x_BD), self.threshold)

    def forward(self, x_BD: torch.Tensor, ctx: StepContext | None = None) -> ForwardOutput:
        raise UsageError("jumprelu SAEs are read for evaluation only; osae does not train them")

    def latent_buffers(self) -> list[str]:
        return ["threshold"]

    def fold_scale_(self, s: float) -> None:
        super().fold_scale_(s)
        with torch.no_grad():
            self.threshold /= s
