"""Every SAE family, by name. The CLI's --arch choices, the checkpoint loader and the docs read this dict."""

from __future__ import annotations

from osae.errors import UsageError
from osae.train.architectures.base import SAE, SAEConfig
from osae.train.architectures.batchtopk import BatchTopKConfig, BatchTopKSAE
from osae.train.architectures.hybridorder import HybridOrderConfig, HybridOrderSAE
from osae.train.architectures.jumprelu import JumpReLUConfig, JumpReLUSAE
from osae.train.architectures.matryoshka import (
    MatryoshkaConfig,
    MatryoshkaRandomConfig,
    MatryoshkaRandomSAE,
    MatryoshkaSAE,
)
from osae.train.architectures.ordered import OrderedConfig, OrderedSAE
from osae.train.architectures.relu_l1 import ReLUConfig, ReLUSAE
from osae.train.architectures.topk import TopKConfig, TopKSAE

ARCHITECTURES: dict[str, tuple[type[SAEConfig], type[SAE]]] = {
    "osae": (OrderedConfig, OrderedSAE),
    "topk": (TopKConfig, TopKSAE),
    "batchtopk": (BatchTopKConfig, BatchTopKSAE),
    "matryoshka": (MatryoshkaConfig, MatryoshkaSAE),
    "matryoshka-random": (MatryoshkaRandomConfig, MatryoshkaRandomSAE),
    "relu": (ReLUConfig, ReLUSAE),
    "hybridorder": (HybridOrderConfig, HybridOrderSAE),
}

# Read from other libraries' checkpoints (osae.foreign) and evaluated, never trained: not --arch choices.
INFERENCE_ARCHITECTURES: dict[str, tuple[type[SAEConfig], type[SAE]]] = {
    "jumprelu": (JumpReLUConfig, JumpReLUSAE),
}


def build(arch: str, n_steps: int = 100_000, **config) -> SAE:
    """An SAE of `arch` whose step-counted settings are those of a run of `n_steps` steps."""
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}")
    cfg_cls, sae_cls = ARCHITECTURES[arch]
    return sae_cls(cfg_cls(**config).for_run(n_steps))


__all__ = ["ARCHITECTURES", "INFERENCE_ARCHITECTURES", "build", "SAE", "SAEConfig"]
