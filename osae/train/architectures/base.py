"""The SAE core every architecture shares (methods.md section 1).

Shapes: B = batch, D = d_in, F = d_sae. Weights are stored F x D (rows are latents): the encoder matmul
`F.linear(x, W_enc_FD)` reads the contiguous rows, and sparse decoding gathers decoder rows with
`F.embedding_bag`, so a (B, F) dense code is never multiplied.

    pre = W_enc (x - b_dec) + b_enc        z = rule(pre)        x_hat = z W_dec + b_dec
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SparseCode:
    """Active latents per token: `idx`, `vals` of shape (B, N) (zeros are padding), or flat (nnz,) with
    `offsets` (B,) marking where each token's entries start (variable counts, as BatchTopK gives)."""

    idx: torch.Tensor
    vals: torch.Tensor
    offsets: torch.Tensor | None = None

    def dense(self, d_sae: int) -> torch.Tensor:
        if self.offsets is None:
            return torch.zeros(self.idx.shape[0], d_sae, dtype=self.vals.dtype, device=self.vals.device).scatter_(
                1, self.idx, self.vals)
        rows = self.rows()
        out = torch.zeros(len(self.offsets), d_sae, dtype=self.vals.dtype, device=self.vals.device)
        out[rows, self.idx] = self.vals
        return out

    def rows(self) -> torch.Tensor:
        """Token index of every entry (flat form)."""
        counts = torch.diff(self.offsets, append=torch.tensor([len(self.idx)], device=self.offsets.device))
        return torch.repeat_interleave(torch.arange(len(self.offsets), device=self.idx.device), counts)

    def l0(self) -> torch.Tensor:
        """Active latents per token (B,)."""
        if self.offsets is None:
            return (self.vals > 0).sum(1)
        return torch.zeros(len(self.offsets), dtype=torch.long, device=self.idx.device).index_add_(
            0, self.rows(), (self.vals > 0).long())

    def fired(self, d_sae: int) -> torch.Tensor:
        """Bool (F,): latents active for at least one token."""
        mask = torch.zeros(d_sae, dtype=torch.bool, device=self.idx.device)
        mask[self.idx[self.vals > 0]] = True
        return mask


Code = SparseCode | torch.Tensor  # dense codes (ReLU) are plain (B, F) tensors


@dataclass
class ForwardOutput:
    recon: torch.Tensor
    code: Code
    losses: dict[str, torch.Tensor]
    pre: torch.Tensor | None = None

    @property
    def loss(self) -> torch.Tensor:
        return sum(self.losses.values())


@dataclass
class SAEConfig:
    """What every architecture has. Subclasses add their own fields."""

    d_in: int
    """Activation width D."""
    d_sae: int = 4096
    """Dictionary size F (latents)."""
    k: int = 32
    """Target active latents per token (m of the OSAE paper); unused by ReLU-L1 architectures."""
    aux_k_coef: float = 1 / 32
    """Weight of the AuxK dead-latent loss (0 turns it off)."""
    aux_k: int | None = None
    """Latents of the AuxK reconstruction; None: d_in // 2."""
    uses_k: ClassVar[bool] = True  # ReLU-based architectures ignore k
    def __post_init__(self) -> None:
        if self.d_in <= 0:
            raise ValueError(f"d_in must be positive; got {self.d_in}")
        if self.d_sae <= 0:
            raise ValueError(f"dict size must be positive; got {self.d_sae}")
        if self.uses_k and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}]; got {self.k}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SAEConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class SAE(nn.Module):
    """Parameters, encoder matmul, sparse decode and the decoder-norm constraint. Architectures subclass it."""

    ARCHITECTURE = "base"

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        D, Fd = cfg.d_in, cfg.d_sae
        W = torch.empty(Fd, D)
        nn.init.kaiming_uniform_(W, a=math.sqrt(5))
        W = W / W.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W.clone())  # (F, D): rows are atoms
        self.W_enc = nn.Parameter(W.clone())  # tied at init, untied afterwards
        self.b_enc = nn.Parameter(torch.zeros(Fd))
        self.b_dec = nn.Parameter(torch.zeros(D))

    # -- encoder / decoder --------------------------------------------------------------------
    def pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        return F.linear(x_BD - self.b_dec, self.W_enc, self.b_enc)

    def encode(self, x_BD: torch.Tensor) -> Code:
        """Inference-mode code (what evaluation uses)."""
        raise NotImplementedError

    def decode(self, code: Code, upto: int | None = None, bias: bool = True) -> torch.Tensor:
        """x_hat from a code; `upto` keeps only latents with index < upto (a prefix)."""
        if isinstance(code, torch.Tensor):
            z = code if upto is None else code[:, :upto]
            out = z @ self.W_dec[: z.shape[1]]
        else:
            vals = code.vals if upto is None else code.vals * (code.idx < upto)
            if code.offsets is None:
                out = F.embedding_bag(code.idx, self.W_dec, per_sample_weights=vals, mode="sum")
            else:
                out = F.embedding_bag(code.idx, self.W_dec, code.offsets, per_sample_weights=vals, mode="sum")
        return out + self.b_dec if bias else out

    def forward(self, x_BD: torch.Tensor, **state) -> ForwardOutput:
        code = self.encode(x_BD)
        recon = self.decode(code)
        return ForwardOutput(recon, code, {"mse": ((recon - x_BD) ** 2).sum(1).mean()})

    # -- constraints (methods.md 1.5) ----------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Project out the radial component of every atom's gradient (atoms are unit norm here)."""
        g = self.W_dec.grad
        if g is not None:
            g -= (g * self.W_dec).sum(1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True) + 1e-12

    # -- per-latent tensors (methods.md 1.6) ------------------------------------------------------
    def latent_params(self) -> list[nn.Parameter]:
        """Parameters indexed by latent along dim 0 (moved together by a permutation)."""
        return [self.W_enc, self.b_enc, self.W_dec]

    def latent_buffers(self) -> list[str]:
        return []

    @torch.no_grad()
    def permute_(self, perm: torch.Tensor) -> None:
        """New latent i is old latent perm[i]: reconstructions are unchanged."""
        for p in self.latent_params():
            p.copy_(p[perm])
        for name in self.latent_buffers():
            buf = getattr(self, name)
            if buf.dim() and buf.shape[0] == self.cfg.d_sae:
                buf.copy_(buf[perm])

    def fold_scale_(self, s: float) -> None:
        """Make an SAE trained on s*x act on raw x (methods.md 1.2): biases and thresholds divide by s."""
        with torch.no_grad():
            self.b_dec /= s
            self.b_enc /= s


def topk_code(pre_BF: torch.Tensor, k: int) -> SparseCode:
    """Per-token TopK of ReLU(pre)."""
    vals, idx = torch.topk(pre_BF, k, dim=1, sorted=False)
    return SparseCode(idx, vals.clamp_min(0))


def batch_topk_code(pre_BF: torch.Tensor, k: int) -> SparseCode:
    """The k * B largest ReLU'd entries of the whole batch, in flat form."""
    B, Fd = pre_BF.shape
    flat = pre_BF.reshape(-1)
    vals, pos = torch.topk(flat, min(k * B, flat.numel()), sorted=False)
    pos, order = torch.sort(pos)
    vals = vals[order].clamp_min(0)
    rows, idx = pos // Fd, pos % Fd
    counts = torch.bincount(rows, minlength=B)
    offsets = torch.cumsum(counts, 0) - counts
    return SparseCode(idx, vals, offsets)


def threshold_code(pre_BF: torch.Tensor, theta: float) -> SparseCode:
    """Every latent whose pre-activation exceeds theta (BatchTopK inference), in flat form."""
    mask = pre_BF > max(theta, 0.0)
    rows, idx = mask.nonzero(as_tuple=True)
    counts = mask.sum(1)
    offsets = torch.cumsum(counts, 0) - counts
    return SparseCode(idx, pre_BF[rows, idx], offsets)


def aux_k_loss(sae: SAE, x_BD: torch.Tensor, recon_BD: torch.Tensor, pre_BF: torch.Tensor,
               dead_F: torch.Tensor | None) -> torch.Tensor:
    """AuxK (methods.md 2.2): the dead latents' top-k_aux reconstruction of the detached residual, without
    b_dec, normalised by the residual's total variance over the batch."""
    zero = pre_BF.new_zeros(())
    if dead_F is None or sae.cfg.aux_k_coef == 0:
        return zero
    n_dead = int(dead_F.sum())
    if n_dead == 0:
        return zero
    k_aux = min(sae.cfg.aux_k or sae.cfg.d_in // 2, n_dead)
    e = (x_BD - recon_BD).detach()
    dead_pre = pre_BF.masked_fill(~dead_F, float("-inf"))
    code = topk_code(dead_pre, k_aux)
    e_hat = sae.decode(code, bias=False)
    denom = ((e - e.mean(0, keepdim=True)) ** 2).sum().clamp_min(1e-12)
    return sae.cfg.aux_k_coef * ((e - e_hat) ** 2).sum() / denom
