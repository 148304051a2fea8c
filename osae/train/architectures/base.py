"""The SAE core every architecture shares (methods.md section 1).

Shapes: B = batch, D = d_in, F = d_sae. Weights are stored F x D (rows are latents): the encoder matmul
`F.linear(x, W_enc_FD)` reads the contiguous rows, and sparse decoding gathers decoder rows with
`F.embedding_bag`, so a (B, F) dense code is never multiplied.

    pre = W_enc (x - b_dec) + b_enc        z = rule(pre)        x_hat = z W_dec + b_dec
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from osae.distributed import SINGLE, Collective
from osae.errors import UsageError


class Code(Protocol):
    """The code of a batch of B tokens, whatever its layout: `SparseCode` (TopK, BatchTopK, OSAE, ...) or
    `DenseCode` (ReLU, HybridOrder). Callers use only these methods, so no caller asks which one it has.
    A latent is active on a token when its value is > 0. Per-latent results are (F,) with F = d_sae."""

    def __len__(self) -> int:
        """B, the number of tokens."""
        ...

    def dense(self, d_sae: int) -> torch.Tensor:
        """The (B, F) activations."""
        ...

    def columns(self, lo: int, hi: int) -> torch.Tensor:
        """(B, hi - lo) activations of latents lo..hi-1, without building the whole dense code."""
        ...

    def l0(self) -> torch.Tensor:
        """Active latents per token (B,), long."""
        ...

    def l1(self) -> torch.Tensor:
        """Sum of |z| per token (B,)."""
        ...

    def fired(self, d_sae: int) -> torch.Tensor:
        """Bool (F,): latents active on at least one token."""
        ...

    def fire_counts(self, d_sae: int) -> torch.Tensor:
        """Long (F,): tokens each latent is active on."""
        ...

    def sum_sq(self, d_sae: int) -> torch.Tensor:
        """Float64 (F,): sum over tokens of z_j^2 (float64 so that long evaluations do not lose digits)."""
        ...

    def truncated(self, upto: int) -> Code:
        """The same code with only latents of index < upto kept (a prefix of the dictionary)."""
        ...

    def decode_with(self, W_FD: torch.Tensor) -> torch.Tensor:
        """(B, D): sum_j z_j W_FD[j] per token (the decoder without its bias)."""
        ...


@dataclass
class SparseCode:
    """Active latents per token: `idx`, `vals` of shape (B, N) (zeros are padding), or flat (nnz,) with
    `offsets` (B,) marking where each token's entries start (variable counts, as BatchTopK gives).
    Implements `Code`."""

    idx: torch.Tensor
    vals: torch.Tensor
    offsets: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.idx.shape[0]) if self.offsets is None else len(self.offsets)

    def dense(self, d_sae: int) -> torch.Tensor:
        if self.offsets is None:
            return torch.zeros(self.idx.shape[0], d_sae, dtype=self.vals.dtype, device=self.vals.device).scatter_(
                1, self.idx, self.vals
            )
        rows = self.rows()
        out = torch.zeros(len(self.offsets), d_sae, dtype=self.vals.dtype, device=self.vals.device)
        out[rows, self.idx] = self.vals
        return out

    def rows(self) -> torch.Tensor:
        """Token index of every entry, in the layout of `idx` ((B, N) padded or (nnz,) flat)."""
        if self.offsets is None:
            return torch.arange(self.idx.shape[0], device=self.idx.device)[:, None].expand_as(self.idx)
        counts = torch.diff(self.offsets, append=torch.tensor([len(self.idx)], device=self.offsets.device))
        return torch.repeat_interleave(torch.arange(len(self.offsets), device=self.idx.device), counts)

    def columns(self, lo: int, hi: int) -> torch.Tensor:
        out = torch.zeros(len(self), hi - lo, dtype=self.vals.dtype, device=self.vals.device)
        keep = (self.idx >= lo) & (self.idx < hi)
        out[self.rows()[keep], self.idx[keep] - lo] = self.vals[keep]
        return out

    def _per_token(self, v: torch.Tensor) -> torch.Tensor:
        """Sum of the entry values `v` (laid out as `idx`) over each token's entries."""
        if self.offsets is None:
            return v.sum(1)
        return torch.zeros(len(self), dtype=v.dtype, device=v.device).index_add_(0, self.rows(), v)

    def l0(self) -> torch.Tensor:
        return self._per_token((self.vals > 0).long())

    def l1(self) -> torch.Tensor:
        return self._per_token(self.vals.abs())

    def fired(self, d_sae: int) -> torch.Tensor:
        mask = torch.zeros(d_sae, dtype=torch.bool, device=self.idx.device)
        mask[self.idx[self.vals > 0]] = True
        return mask

    def fire_counts(self, d_sae: int) -> torch.Tensor:
        return torch.bincount(self.idx[self.vals > 0], minlength=d_sae)

    def sum_sq(self, d_sae: int) -> torch.Tensor:
        sq = self.vals.detach().double().reshape(-1) ** 2  # padding slots hold 0 and add nothing
        return torch.zeros(d_sae, dtype=torch.float64, device=self.vals.device).index_add_(0, self.idx.reshape(-1), sq)

    def truncated(self, upto: int) -> SparseCode:
        return SparseCode(self.idx, self.vals * (self.idx < upto), self.offsets)

    def decode_with(self, W_FD: torch.Tensor) -> torch.Tensor:
        # embedding_bag gathers only the active rows of W: the (B, F) code is never built
        if self.offsets is None:
            return F.embedding_bag(self.idx, W_FD, per_sample_weights=self.vals, mode="sum")
        return F.embedding_bag(self.idx, W_FD, self.offsets, per_sample_weights=self.vals, mode="sum")


@dataclass
class DenseCode:
    """A (B, F') code held as its dense activations `z` (ReLU-style SAEs, where most entries may be
    non-zero). F' < d_sae after `truncated`: the missing latents are zero. Implements `Code`."""

    z: torch.Tensor

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def _pad(self, v_F: torch.Tensor, d_sae: int) -> torch.Tensor:
        """A per-latent (F',) result widened to (d_sae,) with zeros for the truncated latents."""
        if len(v_F) >= d_sae:
            return v_F[:d_sae]
        return torch.cat([v_F, v_F.new_zeros(d_sae - len(v_F))])

    def dense(self, d_sae: int) -> torch.Tensor:
        if self.z.shape[1] >= d_sae:
            return self.z[:, :d_sae]
        return torch.cat([self.z, self.z.new_zeros(len(self.z), d_sae - self.z.shape[1])], 1)

    def columns(self, lo: int, hi: int) -> torch.Tensor:
        return self.dense(hi)[:, lo:hi]

    def l0(self) -> torch.Tensor:
        return (self.z > 0).sum(1)

    def l1(self) -> torch.Tensor:
        return self.z.abs().sum(1)

    def fired(self, d_sae: int) -> torch.Tensor:
        return self._pad((self.z > 0).any(0), d_sae)

    def fire_counts(self, d_sae: int) -> torch.Tensor:
        return self._pad((self.z > 0).sum(0), d_sae)

    def sum_sq(self, d_sae: int) -> torch.Tensor:
        return self._pad((self.z.detach().double() ** 2).sum(0), d_sae)

    def truncated(self, upto: int) -> DenseCode:
        return DenseCode(self.z[:, :upto])  # narrower, so decoding multiplies only the kept columns

    def decode_with(self, W_FD: torch.Tensor) -> torch.Tensor:
        return self.z @ W_FD[: self.z.shape[1]]


@dataclass
class StepContext:
    """What a training forward may know besides its rows (the trainer/architecture contract).

    `step` counts micro-batches; `dead_F` marks latents that have not fired for the dead window (AuxK);
    `generator` is the SAE's own RNG; `collective` joins the processes that hold the other slices of the
    batch, for selections and normalisers that must see the whole batch (BatchTopK, AuxK, HybridOrder)."""

    step: int = 0
    dead_F: torch.Tensor | None = None
    generator: torch.Generator | None = None
    collective: Collective = SINGLE


@dataclass
class ForwardOutput:
    """A training forward's result. `forward` changes no state: running statistics leave as `stats`,
    name -> (reduction, tensor) with reduction sum, min, max or global (already the same on every
    process); the trainer reduces them over processes and hands them to `SAE.update_statistics`."""

    recon: torch.Tensor
    code: Code
    losses: dict[str, torch.Tensor]
    pre: torch.Tensor | None = None
    stats: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def loss(self) -> torch.Tensor:
        return sum(self.losses.values())


@dataclass
class SAEConfig:
    """What every architecture has. Subclasses add their own fields.

    The settings are parsed before the store is open (`osae fit` checks a whole run first), so `d_in` may be
    None until `bind(d_in)` gives the store's width; only a bound config builds an SAE."""

    d_in: int | None = None
    """Activation width D (the store's; None until bound)."""
    d_sae: int = 4096
    """Dictionary size F (latents)."""
    k: int = 32
    """Target active latents per token (m of the OSAE paper)."""
    aux_k_coef: float = 1 / 32
    """Weight of the AuxK dead-latent loss (0 turns it off)."""
    aux_k: int | None = None
    """Latents of the AuxK reconstruction; None: d_in // 2."""
    uses_k: ClassVar[bool] = True  # ReLU-based architectures ignore k (their run names say kNA)
    # Settings counted in training steps. A None value of a name with a rule (share of the run, cap) becomes
    # that share of the run's steps, at most the cap; a rule of None means None stays None (off). A value
    # given longer than the run is refused: it would never take effect.
    step_settings: ClassVar[dict[str, tuple[float, int] | None]] = {}
    saelens: ClassVar[str] = "topk"  # SAELens architecture of the inference code: topk, jumprelu or standard

    def __post_init__(self) -> None:
        if self.d_in is not None and self.d_in <= 0:
            raise UsageError(f"d_in must be positive; got {self.d_in}")
        if self.d_sae <= 0:
            raise UsageError(f"dict size must be positive; got {self.d_sae}")
        if self.uses_k and self.k > self.d_sae:
            raise UsageError(f"k={self.k} is larger than the dictionary size {self.d_sae}: k must be in [1, d_sae]")
        if self.uses_k and self.k < 1:
            raise UsageError(f"k must be in [1, d_sae={self.d_sae}]; got {self.k}")

    def bind(self, d_in: int) -> SAEConfig:
        """This config for activations of width `d_in`, validated again."""
        return replace(self, d_in=d_in)

    def for_run(self, n_steps: int) -> SAEConfig:
        """This config with its step-counted settings resolved for a run of `n_steps` steps."""
        changes = {}
        for name, rule in self.step_settings.items():
            value = getattr(self, name)
            if value is None and rule is not None:
                share, cap = rule
                changes[name] = max(1, min(cap, round(share * n_steps)))
            elif value is not None and value > n_steps:
                raise UsageError(
                    f"--{name.replace('_', '-')} {value} is longer than the run ({n_steps} steps): give at most "
                    f"{n_steps}, or leave it out to scale it with the run"
                )
        return replace(self, **changes) if changes else self

    def frozen(self) -> SAEConfig:
        """This config for an SAE that trains no more (a checkpoint read back, another library's SAE): step
        settings it lacks take their long-run values, which only a further training run would read."""
        return self.for_run(10**12)

    def settings(self) -> dict:
        """What a run records for this SAE: every field but d_in (the store's), and k only where it is used."""
        return {k: v for k, v in asdict(self).items() if k != "d_in" and (k != "k" or self.uses_k)}

    def saelens_architecture(self) -> str:
        """The SAELens architecture that computes this SAE's inference code (osae export)."""
        return self.saelens

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SAEConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class SAE(nn.Module):
    """Parameters, encoder matmul, sparse decode and the decoder-norm constraint. Architectures subclass it."""

    ARCHITECTURE = "base"

    def __init__(self, cfg: SAEConfig):
        unresolved = [n for n, rule in cfg.step_settings.items() if rule is not None and getattr(cfg, n) is None]
        if unresolved:  # a programming error: the trainer resolves them with cfg.for_run(n_steps)
            raise ValueError(f"{type(cfg).__name__}: {', '.join(unresolved)} not resolved; use cfg.for_run(n_steps)")
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
        """x_hat from a code (sparse or dense); `upto` keeps only latents with index < upto (a prefix)."""
        out = (code if upto is None else code.truncated(upto)).decode_with(self.W_dec)
        return out + self.b_dec if bias else out

    def forward(self, x_BD: torch.Tensor, ctx: StepContext | None = None) -> ForwardOutput:
        """The training loss of one micro-batch slice; must not change the module's state (see ForwardOutput)."""
        code = self.encode(x_BD)
        recon = self.decode(code)
        return ForwardOutput(recon, code, {"mse": ((recon - x_BD) ** 2).sum(1).mean()})

    # -- the trainer's hooks (every process calls them with identical arguments) ---------------------
    def update_statistics(self, stats: dict[str, torch.Tensor], step: int) -> None:
        """Fold one micro-batch's reduced `stats` (ForwardOutput.stats, over the whole batch) into buffers."""

    def frozen_units(self, step: int) -> int:
        """Leading latents whose parameters the optimizer must leave alone at `step` (unit sweeping)."""
        return 0

    def permutation_due(self, steps: range) -> torch.Tensor | None:
        """A latent permutation to apply (with the optimizer state) after the optimizer update that ends the
        micro-batches `steps` (one step, or accum_steps of them), or None."""
        return None

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


def batch_topk_code(pre_BF: torch.Tensor, k: int, collective: Collective = SINGLE) -> SparseCode:
    """The k * B largest ReLU'd entries of the whole batch (B over every process), in flat form."""
    B, Fd = pre_BF.shape
    flat = pre_BF.reshape(-1)
    n_keep = k * B * collective.world  # over the whole batch
    vals, pos = torch.topk(flat, min(n_keep, flat.numel()), sorted=False)
    if collective.world > 1:
        # The whole batch's n_keep-th largest value is among the union of every slice's n_keep largest.
        with torch.no_grad():
            candidates = collective.cat(vals.detach())
            theta = torch.topk(candidates, min(n_keep, candidates.numel()), sorted=False).values.min()
        keep = vals >= theta
        vals, pos = vals[keep], pos[keep]
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


def aux_k_loss(
    sae: SAE,
    x_BD: torch.Tensor,
    recon_BD: torch.Tensor,
    pre_BF: torch.Tensor,
    dead_F: torch.Tensor | None,
    collective: Collective = SINGLE,
) -> torch.Tensor:
    """AuxK (methods.md 2.2): the dead latents' top-k_aux reconstruction of the detached residual, without
    b_dec, normalised by the residual's total variance over the whole batch (every process's slice)."""
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
    with torch.no_grad():
        n = collective.world * len(e)
        mean = collective.sum(e.sum(0)) / n
        denom = collective.sum(((e - mean) ** 2).sum()).clamp_min(1e-12)
    # Each process's gradient is averaged over processes: scale by world so the average is the whole batch's.
    return sae.cfg.aux_k_coef * collective.world * ((e - e_hat) ** 2).sum() / denom
