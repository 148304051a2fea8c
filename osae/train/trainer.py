"""Train one or many SAEs on the same stream of batches, checkpoint them, resume them exactly.

The trainer reads batches from an iterator (the store's shuffled loader) and never imports transformers.
Per optimizer update and SAE (methods.md 1.5): backward, remove the radial decoder gradient, freeze swept
units, clip, Adam, restore frozen units, renormalise atoms, and for HybridOrder reorder latents together
with the optimizer state. Under several processes each takes a slice of every batch and gradients are
averaged with all-reduce (equal slices, so this equals one process on the whole batch up to rounding).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from osae.errors import CheckpointError
from osae.store.normalize import Normalizer
from osae.train.architectures import ARCHITECTURES, SAE
from osae.train.architectures.base import SparseCode
from osae.train.checkpoint import (disk_full, load_optimizer, load_state, optimizer_tensors, prune_states,
                                   save_frozen, save_state)
from osae.train.config import SAESpec, TrainConfig

log = logging.getLogger(__name__)
RUN_STATE = "run_state.json"
RUN_CONFIG = "run.json"


@dataclass
class Member:
    """One SAE of the run and everything that moves with it."""

    spec: SAESpec
    sae: SAE
    opt: torch.optim.Optimizer
    names: dict[int, str]
    since_fired: torch.Tensor
    generator: torch.Generator
    directory: Path
    frozen_copy: dict = field(default_factory=dict)
    acc: dict = field(default_factory=lambda: {"loss": 0.0, "sse": 0.0, "l0": 0.0, "n": 0, "fires": None})


def lr_factor(step: int, cfg: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
    frac = step / max(1, cfg.n_steps)
    if cfg.lr_schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    start = 1.0 - cfg.lr_decay_frac
    return warm * (1.0 if frac < start else max(0.0, (1.0 - frac) / max(cfg.lr_decay_frac, 1e-12)))


def geometric_median(x: torch.Tensor, iters: int = 100) -> torch.Tensor:
    """Weiszfeld's algorithm, float64."""
    y = x.double().mean(0)
    for _ in range(iters):
        w = 1.0 / (x.double() - y).norm(dim=1).clamp_min(1e-8)
        y_new = (w[:, None] * x.double()).sum(0) / w.sum()
        if (y_new - y).norm() < 1e-7 * (1 + y.norm()):
            y = y_new
            break
        y = y_new
    return y.float()


class Trainer:
    """`Trainer(cfg, batches, ...).run()`; the CLI builds it from a store (osae.train.fit)."""

    def __init__(self, cfg: TrainConfig, batches, *, d_in: int, normalizer: Normalizer, meta: dict,
                 init_rows: torch.Tensor | None = None, device: torch.device | None = None,
                 rank: int = 0, world: int = 1, loader=None, progress: bool = True, total_variance: float | None = None):
        self.cfg, self.batches, self.meta = cfg, batches, meta
        self.d_in, self.normalizer = d_in, normalizer
        self.device = device or torch.device("cpu")
        self.rank, self.world = rank, world
        self.loader = loader
        self.progress = progress
        # E||x - mean||^2 per token in training units, for the logged FVU.
        self.total_variance = total_variance or float(d_in)
        self.out = Path(cfg.out)
        self.step = 0
        self.skipped = 0
        self.members = [self._member(spec, init_rows) for spec in cfg.saes]
        use_bf16 = cfg.autocast == "bf16" or (cfg.autocast == "auto" and self.device.type == "cuda")
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    def _member(self, spec: SAESpec, init_rows) -> Member:
        cfg_cls, sae_cls = ARCHITECTURES[spec.arch]
        torch.manual_seed(spec.seed)
        sae = sae_cls(cfg_cls(d_in=self.d_in, **spec.config))
        sae.seed = spec.seed
        if init_rows is not None and self.cfg.b_dec_init != "zero":
            with torch.no_grad():
                center = geometric_median(init_rows) if self.cfg.b_dec_init == "geometric_median" else init_rows.mean(0)
                sae.b_dec.copy_(center)
        sae.to(self.device).train()
        names = {id(p): n for n, p in sae.named_parameters()}
        opt = torch.optim.Adam(sae.parameters(), lr=spec.resolved_lr(), betas=self.cfg.adam_betas, eps=self.cfg.adam_eps)
        gen = torch.Generator(device=self.device).manual_seed(spec.seed)
        return Member(spec, sae, opt, names, torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=self.device), gen,
                      self.out / spec.name)

    # -- state --------------------------------------------------------------------------------
    def checkpoint(self, final: bool = False) -> None:
        if self.rank != 0:
            return
        try:
            for m in self.members:
                meta = {**self.meta, "step": self.step, "tokens_seen": self.step * self.cfg.batch_size, "seed": m.spec.seed,
                        "lr": m.spec.resolved_lr(), "normalization": self.normalizer.to_dict(), "final": final}
                save_frozen(m.sae, m.directory, meta)
                tensors, opt_meta = optimizer_tensors(m.opt, m.names)
                tensors = {**{f"opt.{k}": v for k, v in tensors.items()},
                           **{f"sae.{k}": v.detach().cpu() for k, v in m.sae.state_dict().items()},
                           "since_fired": m.since_fired.cpu(), "generator": m.generator.get_state()}
                save_state(m.directory, self.step, tensors, {"optimizer": opt_meta, "step": self.step})
            state = {"step": self.step, "skipped_batches": self.skipped, "finished": final,
                     "loader": self.loader.state() if self.loader is not None else None}
            tmp = self.out / (RUN_STATE + ".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            os.replace(tmp, self.out / RUN_STATE)
            for m in self.members:
                prune_states(m.directory, self.step)
        except OSError as exc:
            if disk_full(exc):
                raise CheckpointError(f"disk full while checkpointing step {self.step} in {self.out}; the previous "
                                      f"checkpoint is intact: free space and run `osae fit --resume {self.out}`") from None
            raise

    def restore(self) -> dict:
        """Load every SAE's state at the run's last checkpoint; returns the run state (with the loader's)."""
        state = json.loads((self.out / RUN_STATE).read_text())
        self.step, self.skipped = int(state["step"]), int(state.get("skipped_batches", 0))
        for m in self.members:
            tensors, meta = load_state(m.directory, self.step)
            m.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
            load_optimizer(m.opt, m.names, {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")}, meta["optimizer"])
            m.since_fired.copy_(tensors["since_fired"].to(self.device))
            m.generator.set_state(tensors["generator"])
        self._truncate_metrics()
        return state

    def _truncate_metrics(self) -> None:
        """Drop metric lines written after the checkpoint being resumed (they will be written again)."""
        for m in self.members:
            path = m.directory / "metrics.jsonl"
            if path.exists():
                keep = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= self.step]
                path.write_text("".join(l + "\n" for l in keep))

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        total = cfg.n_steps
        bar = tqdm(total=total * cfg.batch_size, initial=self.step * cfg.batch_size, unit="tok", unit_scale=True,
                   desc="fit", disable=None if self.progress and self.rank == 0 else True, smoothing=0.05)
        t_last, tokens_last = time.perf_counter(), self.step * cfg.batch_size
        it = iter(self.batches)
        try:
            while self.step < total:
                x = next(it).to(self.device, non_blocking=True)
                if not bool(torch.isfinite(x).all()):
                    if cfg.nonfinite == "stop":
                        raise ValueError(f"batch {self.step} holds NaN or Inf activations; run `osae store verify`, or "
                                         f"pass --nonfinite skip")
                    self.skipped += 1
                    log.warning("skipping batch %d: NaN or Inf activations (%d skipped so far)", self.step, self.skipped)
                    if self.world > 1:
                        raise ValueError("a batch holds NaN or Inf activations; several processes cannot skip it consistently")
                    continue
                for m in self.members:
                    self._train_step(m, x)
                self.step += 1
                bar.update(cfg.batch_size)
                if self.step % cfg.log_every == 0 or self.step == total:
                    now = time.perf_counter()
                    rate = (self.step * cfg.batch_size - tokens_last) / max(now - t_last, 1e-9)
                    t_last, tokens_last = now, self.step * cfg.batch_size
                    self._log_metrics(rate)
                if self.step % cfg.checkpoint_every == 0 and self.step < total:
                    self.checkpoint()
        finally:
            bar.close()
        self.checkpoint(final=True)
        return {"steps": self.step, "tokens": self.step * cfg.batch_size, "skipped_batches": self.skipped,
                "saes": [str(m.directory) for m in self.members]}

    def _train_step(self, m: Member, x: torch.Tensor) -> None:
        cfg, sae, step = self.cfg, m.sae, self.step
        if hasattr(sae, "n_frozen"):
            sae.n_frozen.fill_(sae.frozen_at(step))
        dead = m.since_fired >= cfg.dead_window_tokens
        with self.autocast():
            out = sae(x, dead_F=dead, step=step, generator=m.generator)
        loss = out.loss
        if not torch.isfinite(loss):
            raise ValueError(f"{m.spec.name}: the loss became {float(loss)} at step {step}; lower the learning rate "
                             f"(the last checkpoint is intact)")
        (loss / cfg.accum_steps).backward()
        fired = (out.code.fired(sae.cfg.d_sae) if isinstance(out.code, SparseCode) else (out.code > 0).any(0))
        if self.world > 1:
            import torch.distributed as dist

            fired = fired.to(torch.int32)
            dist.all_reduce(fired, op=dist.ReduceOp.MAX)
            fired = fired.bool()
        m.since_fired += x.shape[0] * self.world
        m.since_fired[fired] = 0
        with torch.no_grad():
            sse = ((out.recon.float() - x) ** 2).sum()
            l0 = out.code.l0().float().sum() if isinstance(out.code, SparseCode) else (out.code > 0).sum().float()
            fires = (torch.bincount(out.code.idx[out.code.vals > 0], minlength=sae.cfg.d_sae)
                     if isinstance(out.code, SparseCode) else (out.code > 0).sum(0))
        m.acc["fires"] = fires if m.acc["fires"] is None else m.acc["fires"] + fires
        m.acc["loss"] += float(loss.detach()) * len(x)
        m.acc["sse"] += float(sse)
        m.acc["l0"] += float(l0)
        m.acc["n"] += len(x)
        if (step + 1) % cfg.accum_steps:
            return
        self._update(m, step)

    def _update(self, m: Member, step: int) -> None:
        cfg, sae = self.cfg, m.sae
        if self.world > 1:
            import torch.distributed as dist

            for p in sae.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        sae.remove_parallel_grad_()
        f = int(getattr(sae, "n_frozen", 0))
        if f:
            frozen = {n: p.detach()[:f].clone() for n, p in (("W_enc", sae.W_enc), ("b_enc", sae.b_enc), ("W_dec", sae.W_dec))}
            for p in (sae.W_enc, sae.b_enc, sae.W_dec):
                if p.grad is not None:
                    p.grad[:f] = 0
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        for g in m.opt.param_groups:
            g["lr"] = m.spec.resolved_lr() * lr_factor(step, cfg)
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
        sae.normalize_decoder_()
        if f:
            # Adam's moments would keep moving a zero-gradient unit: restore the values (after the
            # renormalisation, which would nudge them by rounding) and clear the moments.
            with torch.no_grad():
                for name, p in (("W_enc", sae.W_enc), ("b_enc", sae.b_enc), ("W_dec", sae.W_dec)):
                    p[:f] = frozen[name]
                    st = m.opt.state.get(p, {})
                    for key in ("exp_avg", "exp_avg_sq"):
                        if key in st:
                            st[key][:f] = 0
        if hasattr(sae, "reorder_due") and sae.reorder_due(step):
            self.reorder(m, sae.order())

    @torch.no_grad()
    def reorder(self, m: Member, perm: torch.Tensor) -> None:
        """Permute latents with their Adam moments and dead counters (methods.md 1.6)."""
        m.sae.permute_(perm)
        for p in (m.sae.W_enc, m.sae.b_enc, m.sae.W_dec):
            st = m.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    st[key].copy_(st[key][perm])
        m.since_fired.copy_(m.since_fired[perm])

    def _log_metrics(self, rate: float) -> None:
        if self.rank != 0:
            return
        for m in self.members:
            a = m.acc
            if not a["n"]:
                continue
            line = {"step": self.step, "tokens": self.step * self.cfg.batch_size, "loss": a["loss"] / a["n"],
                    "sse_per_token": a["sse"] / a["n"], "fvu": a["sse"] / a["n"] / self.total_variance,
                    "l0": a["l0"] / a["n"],
                    "dead_fraction": float((m.since_fired >= self.cfg.dead_window_tokens).float().mean()),
                    # dense: latents firing on more than 10% of the window's tokens
                    "dense_fraction": float((a["fires"].float() / a["n"] > 0.1).float().mean()),
                    "lr": m.opt.param_groups[0]["lr"], "tokens_per_s": rate}
            m.directory.mkdir(parents=True, exist_ok=True)
            with open(m.directory / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            m.acc = {"loss": 0.0, "sse": 0.0, "l0": 0.0, "n": 0, "fires": None}
