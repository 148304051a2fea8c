"""The SAE core every architecture shares (methods.md section 1).

Shapes: B = batch, D = d_in, F = d_sae. Weights are stored F x D (rows are latents): the encoder matmul
`F.linear(x, W_enc_FD)` reads the contiguous rows, and sparse decoding gathers decoder rows with
`F.embedding_bag`, so a (B, F) dense code is never multiplied.

    pre = W_enc (x - b_dec) + b_enc        z = rule(pre)        x_hat = z W_dec + b_dec
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from osae.distributed import SINGLE, Collective
from osae.errors import UsageError
from osae.train.architectures.codes import Code
from osae.train.architectures.selection import PreActs, topk_among


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
    # The papers' 1/32 revived too few latents under Adam; AuxK moves only the dead latents' parameters, and
    # 2 gave 1-2% lower FVU than 1 for BatchTopK, Matryoshka and OSAE (docs/fit.md, sessions 11-12)
    aux_k_coef: float = 2.0
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


@dataclass
class KWarmupConfig(SAEConfig):
    """An architecture whose training k starts larger and falls linearly to k (TopK, BatchTopK, Matryoshka, OSAE)."""

    k_init: int | None = None
    """First k of the warm-up (None: d_sae); equal to k turns the warm-up off."""
    k_warmup_steps: int = 0
    """Steps of the linear warm-up from k_init down to k."""
    step_settings: ClassVar[dict] = {"k_warmup_steps": None}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k_init is not None and not self.k <= self.k_init <= self.d_sae:
            raise UsageError(f"k_init must be in [k={self.k}, d_sae={self.d_sae}]; got {self.k_init}")
        if self.k_warmup_steps < 0:
            raise UsageError(f"k_warmup_steps must be at least 0; got {self.k_warmup_steps}")

    def k_at(self, step: int) -> int:
        """The training k at `step`: round(k_init - (k_init - k) step / W) during the warm-up, then k."""
        k0 = self.k_init if self.k_init is not None else self.d_sae
        if self.k_warmup_steps <= 0 or step >= self.k_warmup_steps or k0 == self.k:
            return self.k
        return int(round(k0 - (k0 - self.k) * step / self.k_warmup_steps))


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

    def train_pre_acts(self, x_BD: torch.Tensor) -> PreActs:
        """Pre-activations for a training forward whose code keeps chosen entries (sparse backward)."""
        return PreActs.of(x_BD, self.W_enc, self.b_enc, self.b_dec)

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


# AuxK over at most this many times k_aux dead latents runs as dense products over the dead columns: on the
# CPU a dense (B x n_dead) product is several times faster per multiply than the gathers of a sparse decode
# (d=256, K=4096, 6% dead, k_aux=128: a TopK step took 241 ms with the sparse AuxK, 183 ms with this one and
# 147 ms with no dead latent; docs/benchmarks.md).
AUXK_DENSE_FACTOR = 4


# The dense AuxK products run over the dead columns padded to a multiple of this many. oneDNN keeps one
# compiled bf16 kernel per shape it meets, several MiB each, so a product whose width followed n_dead from step
# to step grew the process by hundreds of MiB over a run (docs/benchmarks.md); padded, it meets a handful.
AUXK_COLUMN_BUCKET = 64


def _dead_reconstruction_dense(sae: SAE, pre: PreActs, dead_F: torch.Tensor, k_aux: int) -> torch.Tensor:
    """AuxK's e_hat from the dead columns only: their pre-activations again, with a graph (B x n_dead), each
    token's top k_aux of them after ReLU, decoded by one product with their atoms. The same selection and
    value as the sparse path (ties aside). Padding columns repeat a dead one and are masked to zero, so they
    add nothing to e_hat or to any gradient."""
    cols = dead_F.nonzero().squeeze(1)
    n_dead = len(cols)
    width = min(-(-n_dead // AUXK_COLUMN_BUCKET) * AUXK_COLUMN_BUCKET, len(dead_F))
    padded = torch.cat([cols, cols[:1].expand(width - n_dead)])
    z = F.relu(F.linear(pre.xc, pre.W[padded], pre.b[padded]))
    real = torch.arange(width, device=z.device) < n_dead
    if k_aux < n_dead:
        keep = torch.topk(z.detach().masked_fill(~real, -1.0), k_aux, dim=1, sorted=False).indices
        z = z * torch.zeros_like(z).scatter_(1, keep, 1.0)
    else:
        z = z * real.to(z.dtype)
    return z @ sae.W_dec[padded].to(z.dtype)


def aux_k_loss(
    sae: SAE,
    x_BD: torch.Tensor,
    recon_BD: torch.Tensor,
    pre: torch.Tensor | PreActs,
    dead_F: torch.Tensor | None,
    collective: Collective = SINGLE,
) -> torch.Tensor:
    """AuxK (methods.md 2.2): the dead latents' top-k_aux reconstruction of the detached residual, without
    b_dec, normalised by the residual's total variance over the whole batch (every process's slice)."""
    zero = x_BD.new_zeros(())
    if dead_F is None or sae.cfg.aux_k_coef == 0:
        return zero
    n_dead = int(dead_F.sum())
    if n_dead == 0:
        return zero
    k_aux = min(sae.cfg.aux_k or sae.cfg.d_in // 2, n_dead)
    e = (x_BD - recon_BD).detach()
    if isinstance(pre, PreActs) and n_dead <= AUXK_DENSE_FACTOR * k_aux:
        e_hat = _dead_reconstruction_dense(sae, pre, dead_F, k_aux)
    else:
        e_hat = sae.decode(topk_among(pre, k_aux, dead_F), bias=False)
    with torch.no_grad():
        n = collective.world * len(e)
        mean = collective.sum(e.sum(0)) / n
        denom = collective.sum(((e - mean) ** 2).sum()).clamp_min(1e-12)
    # Each process's gradient is averaged over processes: scale by world so the average is the whole batch's.
    return sae.cfg.aux_k_coef * collective.world * ((e - e_hat) ** 2).sum() / denom
