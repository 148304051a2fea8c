"""What every foreign reader shares: a library's weights rewritten into osae's SAE (exact reparametrisations
only), hook names mapped to the TransformerLens names osae stores use, and the config dict `load_frozen` gives.

osae's encoder is pre = W_enc (x - b_dec) + b_enc with W_enc and W_dec both (F, D) (osae.train.architectures.base);
each reader transposes, folds and checks shapes into `Weights` and calls `build_sae`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from osae.errors import CheckpointError, UsageError
from osae.train.architectures import ARCHITECTURES, INFERENCE_ARCHITECTURES, SAE


@dataclass
class Weights:
    """Float32 tensors in osae's layout: W_enc_FD, b_enc_F, W_dec_FD, b_dec_D, threshold_F (JumpReLU only)."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None = None

    @property
    def d_in(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def d_sae(self) -> int:
        return int(self.W_dec.shape[0])

    def check(self, path, d_in: int | None = None, d_sae: int | None = None) -> Weights:
        """Refuse tensors whose shapes disagree with each other or with the config's d_in / d_sae."""
        D, F = d_in or self.d_in, d_sae or self.d_sae
        want = {"W_enc": (F, D), "b_enc": (F,), "W_dec": (F, D), "b_dec": (D,)}
        if self.threshold is not None:
            want["threshold"] = (F,)
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise CheckpointError(f"{path}: {name} has shape {got}, expected {shape} (d_in={D}, d_sae={F})")
        return self

    def fold_input_bias(self) -> None:
        """For encoders that do not subtract b_dec (SAELens apply_b_dec_to_input=False, dictionary_learning's
        JumpReLU and AutoEncoderNew): W x + b = W (x - b_dec) + (b + W b_dec)."""
        self.b_enc = self.b_enc + self.W_enc @ self.b_dec

    def fold_decoder_norm(self) -> None:
        """Codes computed on pre * ||d_j|| and decoded with d_j / ||d_j|| (SAELens rescale_acts_by_decoder_norm)
        are the codes of the SAE whose encoder rows, biases and thresholds are scaled by ||d_j|| and whose atoms
        are unit norm: the same selection, the same reconstruction."""
        n = self.W_dec.norm(dim=1)
        self.W_enc = self.W_enc * n[:, None]
        self.b_enc = self.b_enc * n
        self.W_dec = self.W_dec / n[:, None]
        if self.threshold is not None:
            self.threshold = self.threshold * n

    def scale_decoder_rows(self, s_F: torch.Tensor) -> None:
        """decode(z * s) = decode'(z) with atoms d_j s_j (SAELens' finetuning scaling factor)."""
        self.W_dec = self.W_dec * s_F[:, None]


def as_f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def build_sae(arch: str, w: Weights, device: str | torch.device = "cpu", **config) -> SAE:
    """An osae SAE of `arch` (trainable or inference-only) holding `w`, in eval mode on `device`."""
    cfg_cls, sae_cls = {**ARCHITECTURES, **INFERENCE_ARCHITECTURES}[arch]
    sae = sae_cls(cfg_cls(d_in=w.d_in, d_sae=w.d_sae, **config).frozen())
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(getattr(w, name))
        if arch == "jumprelu":
            sae.threshold.copy_(w.threshold)
    return sae.to(device).eval()


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None


def require(d: dict, key: str, path) -> object:
    if key not in d:
        raise CheckpointError(f"{path} has no '{key}' tensor/field; it is not a complete checkpoint of its library")
    return d[key]


_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)((?:\.[A-Za-z_]+)*)$")
_SUB = {"": "resid_post", ".mlp": "mlp_out", ".self_attn": "attn_out", ".attn": "attn_out", ".attention": "attn_out"}


def module_hook(module: str) -> tuple[str, int | None]:
    """A transformers module name (sparsify's hookpoints: `layers.6`, `h.6.mlp`, `gpt_neox.layers.6`) as the
    TransformerLens name osae harvests under: a block's output is `blocks.L.hook_resid_post`, its MLP's
    `hook_mlp_out`, its attention's `hook_attn_out`. Names that are none of these are kept as they are."""
    m = _LAYER.search(module)
    if m and m.group(2) in _SUB:
        layer = int(m.group(1))
        return f"blocks.{layer}.hook_{_SUB[m.group(2)]}", layer
    return module, None


def hook_layer(hook: str | None) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook or "")
    return int(m.group(1)) if m else None


def foreign_config(
    fmt: str,
    path,
    sae: SAE,
    *,
    hook: str | None,
    normalization: dict | None = None,
    seed: int | None = None,
    step: int | None = None,
    source_config: dict | None = None,
    notes: list[str] | None = None,
) -> dict:
    """The config dict of a foreign checkpoint, shaped like `load_frozen`'s so that every metric reads it
    unchanged; `source_config` keeps what the library saved (seed families are drawn from it)."""
    hook_info = {"layer": hook_layer(hook), "hook": (hook or "").rsplit(".hook_", 1)[-1] or None}
    return {
        "format": fmt,
        "source": str(path),
        "architecture": sae.ARCHITECTURE,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "arch_config": sae.cfg.to_dict(),
        "hook": hook,
        "hook_info": hook_info,
        "normalization": normalization or {"kind": "none"},
        "step": step,
        "seed": seed,
        "source_config": source_config or {},
        "notes": notes or [],
    }


def unsupported(path, what: str, remedy: str = "") -> UsageError:
    return UsageError(f"{path}: {what} is not supported by osae's reader{'; ' + remedy if remedy else ''}")
