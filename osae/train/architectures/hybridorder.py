"""HybridOrder (anonymous submission; methods.md 2.8): a ReLU SAE whose L1 weight follows the input norm,
and whose latents are reordered by firing frequency.

    L = ||x - x_hat||^2 + lambda_t ||z||_1,   lambda_t = lambda_0 * n_t / MA_t,
    n_t = mean_batch ||x||_2,  MA_t = beta MA_{t-1} + (1 - beta) n_t  (beta = 0.99, MA_0 = n_0).
Statistics: c_i(t) = share of the batch's tokens with z_i > eps; EMA(0.99) of c; the last 10 values of c.
Reorder at step t >= reorder_start when t % reorder_every == 0 or v_t = mean_i Var(last 10 c_i) > tau:
sort latents by decreasing EMA frequency and permute every per-latent tensor and the optimizer state
(the trainer does the optimizer). Because the loss is permutation invariant and Adam is coordinate-wise,
a full permutation leaves training unchanged up to the order of the latents (a test checks this).
Steps count micro-batches (the paper's 4,882 steps of 2,048 tokens; read as optimizer updates its 3000-step
warm-up would never end); its recipe adds gradient accumulation (4), lr 3e-4 with 3000 warm-up steps and cosine
decay, set in the trainer config. Under accumulation an update reorders when any of its micro-batches is a
scheduled step, so the schedule fires whatever accum_steps is; metrics.jsonl counts the reorders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from osae.train.architectures.base import SAE, ForwardOutput, SAEConfig, StepContext
from osae.train.architectures.codes import DenseCode

ARCHITECTURE = "hybridorder"
HISTORY = 10


@dataclass
class HybridOrderConfig(SAEConfig):
    uses_k: ClassVar[bool] = False
    saelens: ClassVar[str] = "standard"
    l1_coef: float = 0.04
    """lambda_0."""
    norm_beta: float = 0.99
    """EMA factor of the input-norm moving average."""
    freq_beta: float = 0.99
    """EMA factor of the firing frequency used to sort latents."""
    eps: float = 0.0
    """A latent fires when z > eps."""
    reorder_start: int | None = None
    """First step at which reordering may happen (None: the paper's 2000 of 4882 steps, as a share of the
    run, at most 2000)."""
    reorder_every: int | None = None
    """Reorder every this many steps (None: the paper's 500 of 4882 steps, as a share, at most 500) ..."""
    step_settings: ClassVar[dict] = {"reorder_start": (2000 / 4882, 2000), "reorder_every": (500 / 4882, 500)}
    reorder_tau: float = 0.1
    """... or whenever the mean variance of recent firing shares exceeds tau (shares: fractions of each batch's
    tokens, as the paper defines c_i, so tau means the same at any batch size; counts would scale it by B^2)."""


class HybridOrderSAE(SAE):
    ARCHITECTURE = ARCHITECTURE

    def __init__(self, cfg: HybridOrderConfig):
        super().__init__(cfg)
        self.register_buffer("norm_ma", torch.tensor(-1.0))
        self.register_buffer("freq_ema", torch.zeros(cfg.d_sae))
        self.register_buffer("freq_hist", torch.zeros(HISTORY, cfg.d_sae))
        self.register_buffer("hist_len", torch.tensor(0, dtype=torch.long))

    def encode(self, x_BD):
        return DenseCode(torch.relu(self.pre_acts(x_BD)))

    def norm_average(self, n_t: torch.Tensor) -> torch.Tensor:
        """MA_t: the moving average of the batch's mean input norm, including this batch's n_t."""
        if float(self.norm_ma) < 0:
            return n_t
        return self.cfg.norm_beta * self.norm_ma + (1 - self.cfg.norm_beta) * n_t

    def l1_weight(self, n_t: torch.Tensor) -> torch.Tensor:
        return self.cfg.l1_coef * n_t / self.norm_average(n_t)

    def forward(self, x_BD: torch.Tensor, ctx: StepContext | None = None) -> ForwardOutput:
        ctx = ctx or StepContext()
        c = ctx.collective
        with torch.no_grad():  # n_t is the mean norm over the whole batch, every process's slice
            n_t = c.sum(x_BD.norm(dim=1).sum()) / (len(x_BD) * c.world)
        z = torch.relu(self.pre_acts(x_BD))
        code = DenseCode(z)
        recon = self.decode(code)
        losses = {"mse": ((recon - x_BD) ** 2).sum(1).mean(), "l1": self.l1_weight(n_t) * z.sum(1).mean()}
        stats = {
            "input_norm": ("global", n_t),
            "fires": ("sum", (z.detach() > self.cfg.eps).sum(0).float()),
            "tokens": ("sum", z.new_tensor(float(len(x_BD)))),
        }
        return ForwardOutput(recon, code, losses, stats=stats)

    @torch.no_grad()
    def update_statistics(self, stats, step: int) -> None:
        self.norm_ma.copy_(self.norm_average(stats["input_norm"]))
        self.track(stats["fires"] / stats["tokens"])

    @torch.no_grad()
    def track(self, c: torch.Tensor) -> None:
        """Fold one batch's firing shares c_i (F,) into the EMA and the history."""
        self.freq_ema.mul_(self.cfg.freq_beta).add_((1 - self.cfg.freq_beta) * c)
        self.freq_hist.copy_(torch.roll(self.freq_hist, 1, 0))
        self.freq_hist[0] = c
        self.hist_len.add_(1).clamp_(max=HISTORY)

    def permutation_due(self, steps: range) -> torch.Tensor | None:
        return self.order() if self.reorder_due(steps) else None

    def reorder_due(self, steps: range | int) -> bool:
        """Whether the update ending the micro-batches `steps` reorders: one of them is a scheduled step
        (t >= reorder_start and t % reorder_every == 0; steps count micro-batches, so a schedule still fires
        under gradient accumulation), or the recent firing shares vary by more than tau."""
        steps = range(steps, steps + 1) if isinstance(steps, int) else steps
        if steps[-1] < self.cfg.reorder_start:
            return False
        if any(t >= self.cfg.reorder_start and t % self.cfg.reorder_every == 0 for t in steps):
            return True
        n = int(self.hist_len)
        v = float(self.freq_hist[:n].var(0, unbiased=False).mean()) if n > 1 else 0.0
        return v > self.cfg.reorder_tau

    def order(self) -> torch.Tensor:
        """Latents by decreasing EMA frequency (ties: lower index first)."""
        return torch.sort(-self.freq_ema, stable=True).indices

    def latent_buffers(self) -> list[str]:
        return ["freq_ema"]

    @torch.no_grad()
    def permute_(self, perm: torch.Tensor) -> None:
        super().permute_(perm)
        self.freq_hist.copy_(self.freq_hist[:, perm])
