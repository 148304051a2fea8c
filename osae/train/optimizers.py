"""The optimizers `osae fit --optimizer` offers, and what the trainer asks of them.

`adam-lazy` (the default): Adam that leaves a latent's rows and moments alone in steps where it has no
gradient (`LazyAdam`). `adam`: torch's Adam. `signum-sf`: sign descent under schedule-free averaging
(Defazio et al. 2024, "The Road Less Scheduled"; sparsify's default). `adam-sf`: the paper's schedule-free
Adam, whose base step divides by the root of an EMA of squared gradients (beta2, bias-corrected) instead of
taking the sign.
Schedule-free keeps two sequences per parameter:

    z_{t+1} = z_t - lr_t sign(g_t)     or     z_t - lr_t g_t / (sqrt(v_t) + eps)     (the base steps)
    x_{t+1} = (1 - c_t) x_t + c_t z_{t+1},  c_t = lr_t^2 / sum_{s<=t} lr_s^2     (their weighted average)

and evaluates gradients at y = beta x + (1 - beta) z, which the module's parameters hold while training. The
SAE that is saved for use is x. Atoms stay unit-norm: the trainer renormalises y's decoder rows after each
step, `after_step` renormalises z's, and `averaged` renormalises x's when it is lent to the module.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

OPTIMIZERS = ("adam-lazy", "adam", "signum-sf", "adam-sf")


def is_schedule_free(name: str) -> bool:
    """Does optimizer `name` average its iterates (warm-up, then no decay)?"""
    return name in ("signum-sf", "adam-sf")


class ScheduleFree(torch.optim.Optimizer):
    """Schedule-free averaging over sign steps (`rms=False`) or RMS-normalised steps (`rms=True`, with
    beta2 and eps); the parameters hold y (see the module docstring)."""

    def __init__(self, params, lr: float, momentum: float = 0.95, rms: bool = False, beta2=0.999, eps=1e-8):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_sum": 0.0, "steps": 0})
        self.rms, self.beta2, self.eps = rms, beta2, eps

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if all(p.grad is None for p in group["params"]):
                continue  # no gradient, no step: the average and the bias correction stay where they are
            lr, beta = group["lr"], group["momentum"]
            group["weight_sum"] += lr**2
            group["steps"] += 1
            c = lr**2 / group["weight_sum"] if group["weight_sum"] > 0 else 0.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["z"], st["x"] = p.detach().clone(), p.detach().clone()
                    if self.rms:
                        st["v"] = torch.zeros_like(p)
                z, x = st["z"], st["x"]
                if self.rms:
                    st["v"].mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
                    denom = (st["v"] / (1 - self.beta2 ** group["steps"])).sqrt_().add_(self.eps)
                    z.addcdiv_(p.grad, denom, value=-lr)
                else:
                    z.add_(p.grad.sign(), alpha=-lr)
                x.lerp_(z, c)
                p.copy_(x).lerp_(z, 1 - beta)


class LazyAdam(torch.optim.Optimizer):
    """Adam that moves only the rows (latents) with a gradient this step.

    A latent that does not fire in a batch gets an exactly zero gradient on its encoder row, bias and atom.
    torch's Adam still moves it along its decaying first moment, and shrinks its second moment, so a rare
    latent drifts between firings and takes an outsized step when it next fires. Here a row with an all-zero
    gradient keeps its parameters and both moments, and each row's bias correction counts its own updates.
    Rows are the first dimension (every element of a 1-D parameter is a row). Measured against torch's Adam
    at the same learning rate (docs/fit.md, session 16): held-out FVU 1.003-1.008x and 30-78% fewer dead
    latents, for every architecture measured, at K = 4096 and 16384."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                    st["row_steps"] = torch.zeros(max(p.shape[:1], default=1), dtype=p.dtype, device=p.device)
                g, m, v = (t.view(len(st["row_steps"]), -1) for t in (p.grad, st["exp_avg"], st["exp_avg_sq"]))
                # Masked dense updates in place, one K x d buffer: K=16384, d=256 17-19 ms a step, against
                # 34-37 ms with a copy per term and 34-138 ms gathering the active rows (fused Adam: 4-5 ms).
                on = g.ne(0).any(1, keepdim=True)
                n = st["row_steps"].view(-1, 1).add_(on)
                w = on.to(p.dtype)
                m.lerp_(g, w * (1 - b1))  # weight 0 leaves a row exactly as it was
                v.mul_(1 - w * (1 - b2)).addcmul_(g, g, value=1 - b2)  # a skipped row: v * 1 + 0, no g * g copy
                step = (v / (1 - b2**n).clamp_min_(1e-30)).sqrt_().add_(eps)  # the one K x d buffer
                step.reciprocal_().mul_(m).mul_(w * -lr / (1 - b1**n).clamp_min_(1e-30))
                p.view_as(g).add_(step)


def make_optimizer(name: str, params, lr: float, betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    if is_schedule_free(name):
        return ScheduleFree(params, lr, rms=name == "adam-sf", beta2=betas[1], eps=eps)
    if name == "adam-lazy":
        return LazyAdam(params, lr, betas, eps)
    # fused: one pass over each parameter instead of a dozen elementwise kernels (15 -> 2 CPU-ms a step at
    # d=256, K=4096); the same update as the for-loop form up to rounding.
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)


def default_lr(name: str, d_sae: int, batch_size: int = 4096) -> float:
    """The learning rate where none is given: the schedule-free optimizers' scaled with the dictionary as
    1/sqrt(d_sae); the Adams' with the rows each latent sees per update, as (batch_size / d_sae)^0.87 for
    adam-lazy and ^0.75 for adam."""
    # signum-sf: sparsify's rule, measured best among 5e-3..4e-2 at K=4096. adam-sf: measured at K=4096.
    # adam: 5e-3 at K = batch = 4096 with the half-run warm-up and AuxK alpha 1. At K=16384 the 1/sqrt(K) rule's
    # 2.5e-3 left 26% of the latents dead in 244 steps, 1.8e-3 13% (8.3% with the final warm-up and AuxK);
    # at K = batch = 1024 (the demo) 3e-3..7e-3 gave the same FVU, with fewer dead at the lower rates
    # (docs/fit.md, sessions 10-11).
    # adam-lazy: its fewer dead latents leave room for a higher rate at K = 4096 (6e-3: 0.96x the FVU of 5e-3
    # at 1M tokens, 0.98x at 4M, at most 1.4% dead; 7e-3 left 2.7%), while at K = 16384 1.8e-3 is already
    # above 2% dead: 6e-3 at K = batch and 1.8e-3 at four times that give the steeper exponent (session 17)
    if name in ("signum-sf", "adam-sf"):
        return {"signum-sf": 5e-3, "adam-sf": 4e-3}[name] / (d_sae / 2**14) ** 0.5
    peak, exponent = {"adam-lazy": (6e-3, 0.87), "adam": (5e-3, 0.75)}[name]
    return peak * (batch_size / d_sae) ** exponent


def after_step(opt: torch.optim.Optimizer, W_dec: torch.nn.Parameter) -> None:
    """Keep the optimizer's own copies of the atoms on the unit sphere, as the module's are."""
    if isinstance(opt, ScheduleFree) and W_dec in opt.state:
        z = opt.state[W_dec]["z"]
        z /= z.norm(dim=1, keepdim=True) + 1e-12


@contextmanager
def averaged(opt: torch.optim.Optimizer, module: torch.nn.Module):
    """The module holds the parameters to use (schedule-free: x, atoms renormalised) inside the block."""
    if not isinstance(opt, ScheduleFree) or not opt.state:
        yield
        return
    held = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p in opt.state:
                held[name] = p.detach().clone()
                p.copy_(opt.state[p]["x"])
        if "W_dec" in held:
            module.W_dec /= module.W_dec.norm(dim=1, keepdim=True) + 1e-12
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name in held:
                    p.copy_(held[name])


def freeze_rows_(opt: torch.optim.Optimizer, p: torch.nn.Parameter, f: int) -> None:
    """Pin the first f rows of p's optimizer state to p's (restored) rows: Adam's moments cleared,
    schedule-free's z and x set to the value (so y = x = z stays put) and its v cleared."""
    st = opt.state.get(p, {})
    for key in ("exp_avg", "exp_avg_sq", "v"):
        if key in st:
            st[key][:f] = 0
    for key in ("z", "x"):
        if key in st:
            st[key][:f] = p[:f]


def latent_state_keys(opt: torch.optim.Optimizer) -> tuple[str, ...]:
    """Per-parameter state that is indexed like the parameter (moved with a latent permutation)."""
    if isinstance(opt, LazyAdam):
        return ("exp_avg", "exp_avg_sq", "row_steps")
    return ("z", "x", "v") if isinstance(opt, ScheduleFree) else ("exp_avg", "exp_avg_sq")
