"""Train one or many SAEs on the same stream of batches, checkpoint them, resume them exactly.

The trainer reads batches from an iterator (the store's shuffled loader) and never imports transformers.
The trainer/architecture contract (osae.train.architectures.base):
- `sae.forward(x, StepContext)` computes one micro-batch's losses and changes no state. What must see the
  whole batch (BatchTopK's selection, AuxK's normaliser, HybridOrder's input norm) uses the context's
  collective; running statistics come back as `ForwardOutput.stats`.
- The trainer reduces those statistics over processes and calls `sae.update_statistics(stats, step)`, so
  every process holds the same thresholds, averages and counters.
- Per optimizer update (methods.md 1.5): average gradients over processes, remove the radial decoder
  gradient, leave `sae.frozen_units(step)` leading units alone (unit sweeping), clip, Adam, renormalise
  atoms, then apply `sae.permutation_due(step)` (HybridOrder) together with the optimizer state.
Under several processes each holds an equal slice of every batch, so a run equals the one-process run up
to float rounding, for every architecture.
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

from osae import faults
from osae.distributed import SINGLE, Collective, barrier, gather
from osae.errors import CheckpointError, RunInterrupted, UsageError
from osae.progress import progress as progress_bar
from osae.store import Normalizer
from osae.train.architectures import ARCHITECTURES, SAE
from osae.train.architectures.base import StepContext
from osae.train.batches import ResumableBatches
from osae.train.checkpoint import (
    disk_full,
    load_optimizer,
    load_state,
    optimizer_tensors,
    prune_states,
    save_frozen,
    save_state,
)
from osae.train.config import SAESpec, TrainConfig
from osae.train.curves import write_training_curves
from osae.train.optimizers import (
    after_step,
    averaged,
    freeze_rows_,
    is_schedule_free,
    latent_state_keys,
    make_optimizer,
)
from osae.train.run_dir import CURVES, RUN_STATE
from osae.train.stop import StopRequest

log = logging.getLogger(__name__)
# Checkpoints by time as well as by steps, so a kill never costs much work whatever --checkpoint-every says:
FIRST_CHECKPOINT_S = 120.0  # the first one after about two minutes of training,
CHECKPOINT_INTERVAL_S = 600.0  # then at least every ten minutes.
TRACKED_KEYS = ("loss", "fvu", "l0", "dead_fraction", "dense_fraction", "lr", "tokens_per_s")  # --log-to
CURVES_EVERY_S = 60.0  # training_curves.png is redrawn at a checkpoint at most this often, and at the end
NONFINITE_STREAK = 20  # non-finite losses in a row after which --nonfinite skip stops: the run has diverged


def _empty_sums() -> dict:
    """A member's metric sums since its last metrics line."""
    return {"loss": 0.0, "sse": 0.0, "l0": 0.0, "n": 0, "fires": None}


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
    dead_window: int  # tokens without firing after which a latent counts as dead (AuxK)
    frozen_copy: dict = field(default_factory=dict)
    nonfinite: int = 0  # micro-batches skipped for a non-finite loss
    nonfinite_streak: int = 0
    reorders: int = 0  # latent permutations applied so far (HybridOrder)
    acc: dict = field(default_factory=_empty_sums)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if is_schedule_free(cfg.optimizer):  # schedule-free: its averaging replaces the decay
        return warm
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
    """`Trainer(cfg, batches, d_in=..., normalizer=..., meta=...).run()`; osae.train.fit builds it from a store.

    `batches` is a ResumableBatches (the store's ShuffledLoader, or TensorBatches in memory); its state goes
    into every checkpoint. `collective` joins the run's processes: under `cfg.parallel` data each holds a
    slice of every batch, under sae each holds every batch and trains its share of the SAEs."""

    def __init__(
        self,
        cfg: TrainConfig,
        batches: ResumableBatches,
        *,
        d_in: int,
        normalizer: Normalizer,
        meta: dict,
        init_rows: torch.Tensor | None = None,
        device: torch.device | None = None,
        collective: Collective = SINGLE,
        progress: bool = True,
        total_variance: float | None = None,
        first_checkpoint_s: float = FIRST_CHECKPOINT_S,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
        tracked: bool = False,
        tracker=None,
    ):
        if not isinstance(batches, ResumableBatches):
            raise TypeError(f"batches must be resumable (iterate, state, load_state); got {type(batches).__name__}")
        self.cfg, self.batches, self.meta = cfg, batches, meta
        self.d_in, self.normalizer = d_in, normalizer
        self.device = device or torch.device("cpu")
        self.collective = collective  # every process of the run (signals, clock, checkpoints)
        self.rank, self.world = collective.rank, collective.world
        # data: each process holds a slice of every batch, and every SAE step reduces over them.
        # sae: each process holds whole batches and trains its own share of the SAEs, alone.
        self.parallel = cfg.parallel if collective.world > 1 else "data"
        self.batch_collective = collective if self.parallel == "data" else SINGLE
        self.writes_saes = self.rank == 0 or self.parallel == "sae"
        self.progress = progress
        self.first_checkpoint_s, self.checkpoint_interval_s = first_checkpoint_s, checkpoint_interval_s
        self.checkpointed = False  # has this run a checkpoint yet (set by restore and checkpoint)
        # `tracked` is the same on every process; only process 0 holds the tracker (osae.tracking).
        self.tracked, self.tracker = tracked, tracker
        self._curves_time = -math.inf
        # E||x - mean||^2 per token in training units, for the logged FVU.
        self.total_variance = total_variance or float(d_in)
        self.out = Path(cfg.out)
        self.step = 0
        self.skipped = 0
        self.loss_divisor = 1.0  # the FVU loss scaling's divisor of the current batch
        owned = cfg.saes if self.parallel == "data" else cfg.saes[self.rank :: self.world]
        self.members = [self._member(spec, init_rows) for spec in owned]
        if self.parallel == "sae":
            log.info("process %d of %d trains %s", self.rank, self.world, ", ".join(s.name for s in owned))
        use_bf16 = cfg.uses_bf16(self.device.type, d_in)
        log.debug("encoder matmul in %s (--autocast %s)", "bf16" if use_bf16 else "fp32", cfg.autocast)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    def _member(self, spec: SAESpec, init_rows) -> Member:
        _, sae_cls = ARCHITECTURES[spec.arch]
        torch.manual_seed(spec.seed)
        sae = sae_cls(spec.build_config(self.d_in, self.cfg.n_steps))
        sae.seed = spec.seed
        if init_rows is not None and self.cfg.b_dec_init != "zero":
            with torch.no_grad():
                center = geometric_median(init_rows) if self.cfg.b_dec_init == "geometric_median" else init_rows.mean(0)
                sae.b_dec.copy_(center)
        sae.to(self.device).train()
        names = {id(p): n for n, p in sae.named_parameters()}
        opt = make_optimizer(
            self.cfg.optimizer, sae.parameters(), self.cfg.lr_of(spec), self.cfg.adam_betas, self.cfg.adam_eps
        )
        gen = torch.Generator(device=self.device).manual_seed(spec.seed)
        return Member(
            spec,
            sae,
            opt,
            names,
            torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=self.device),
            gen,
            self.out / spec.name,
            self.cfg.dead_window_of(spec),
        )

    # -- state --------------------------------------------------------------------------------
    def checkpoint(self, final: bool = False) -> None:
        """Write every SAE's state, then the run state that names that step, then drop older states. Under
        --parallel sae each process writes the SAEs it owns. Each phase ends with every process knowing
        whether any failed, so that none waits forever for one that stopped, and no run state names a step
        that some process could not write."""
        error = self._attempt(lambda: self._write_saes(final)) if self.writes_saes else None
        self._raise_if_any_failed(error, "could not write its SAEs")
        error = self._attempt(lambda: self._write_run_state(final)) if self.rank == 0 else None
        self._raise_if_any_failed(error, "could not write the run state")

        def tidy():
            if self.rank == 0 and (final or time.perf_counter() - self._curves_time >= CURVES_EVERY_S):
                write_training_curves(self.out, [s.name for s in self.cfg.saes], self.out / CURVES)
                self._curves_time = time.perf_counter()
            for m in self.members if self.writes_saes else []:
                prune_states(m.directory, self.step)

        self._raise_if_any_failed(self._attempt(tidy), "could not remove older checkpoints")
        faults.reached("fit-checkpoint")

    @staticmethod
    def _attempt(work) -> Exception | None:
        try:
            work()
        except (OSError, CheckpointError) as exc:
            return exc
        return None

    def _raise_if_any_failed(self, error: Exception | None, what: str) -> None:
        if self.world > 1:
            failed = int(self.collective.max(torch.tensor([int(error is not None)])))
            if failed and error is None:
                error = CheckpointError(
                    f"another process {what} at step {self.step}; the previous checkpoint is intact: see its "
                    f"message, then run the same command again"
                )
        if error is not None:
            self._raise_checkpoint_error(error)

    def _write_run_state(self, final: bool) -> None:
        state = {"step": self.step, "skipped_batches": self.skipped, "finished": final, "loader": self.batches.state()}
        tmp = self.out / (RUN_STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.out / RUN_STATE)

    def _raise_checkpoint_error(self, exc: Exception) -> None:
        if isinstance(exc, OSError) and disk_full(exc):
            raise CheckpointError(
                f"disk full while checkpointing step {self.step} in {self.out}; the previous "
                f"checkpoint is intact: free space and run `osae fit --resume {self.out}`"
            ) from None
        if isinstance(exc, OSError):  # the file system's refusal (a path gone or taken, no permission), not a bug
            raise CheckpointError(
                f"could not write the checkpoint of step {self.step} in {self.out} ({exc}); earlier "
                f"checkpoints are untouched: fix that and run the same command again"
            ) from None
        raise exc

    def _write_saes(self, final: bool) -> None:
        diverged = [m.spec.name for m in self.members if not all(bool(p.isfinite().all()) for p in m.sae.parameters())]
        if diverged:  # never written: the previous checkpoint stays the one to resume
            raise CheckpointError(
                f"{diverged[0]}: its weights are not finite at step {self.step}; nothing was written and the "
                f"previous checkpoint is intact: lower the learning rate and start again with --overwrite"
            )
        for m in self.members:
            meta = {
                **self.meta,
                "step": self.step,
                "tokens_seen": self.step * self.cfg.batch_size,
                "seed": m.spec.seed,
                "lr": self.cfg.lr_of(m.spec),
                "normalization": self.normalizer.to_dict(),
                "final": final,
            }
            with averaged(m.opt, m.sae):  # schedule-free: the averaged iterate is the SAE to use
                save_frozen(m.sae, m.directory, meta)
            tensors, opt_meta = optimizer_tensors(m.opt, m.names)
            tensors = {
                **{f"opt.{k}": v for k, v in tensors.items()},
                **{f"sae.{k}": v.detach().cpu() for k, v in m.sae.state_dict().items()},
                "since_fired": m.since_fired.cpu(),
                "generator": m.generator.get_state(),
            }
            counters = {"nonfinite": m.nonfinite, "nonfinite_streak": m.nonfinite_streak, "reorders": m.reorders}
            save_state(m.directory, self.step, tensors, {"optimizer": opt_meta, "step": self.step, **counters})

    def restore(self) -> dict:
        """Load every SAE's state and the batches' position at the run's last checkpoint; returns the run state."""
        state = json.loads((self.out / RUN_STATE).read_text())
        self.step, self.skipped = int(state["step"]), int(state.get("skipped_batches", 0))
        self.checkpointed = True
        for m in self.members:
            tensors, meta = load_state(m.directory, self.step)
            m.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
            load_optimizer(
                m.opt, m.names, {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")}, meta["optimizer"]
            )
            m.since_fired.copy_(tensors["since_fired"].to(self.device))
            m.generator.set_state(tensors["generator"])
            m.nonfinite, m.nonfinite_streak = int(meta.get("nonfinite", 0)), int(meta.get("nonfinite_streak", 0))
            m.reorders = int(meta.get("reorders", 0))
        if state.get("loader"):
            self.batches.load_state(state["loader"])
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
        bar = progress_bar(
            total * cfg.batch_size,
            "fit",
            "tok",
            enabled=self.progress and self.rank == 0,
            initial=self.step * cfg.batch_size,
            unit_scale=True,
            smoothing=0.05,
        )
        t_last, tokens_last = time.perf_counter(), self.step * cfg.batch_size
        self._last_checkpoint_time = time.perf_counter()
        it = iter(self.batches)
        with bar, StopRequest() as stop:
            while self.step < total:
                x = next(it).to(self.device, non_blocking=True)
                if not self._finite(x):
                    continue
                self.loss_divisor = self._batch_variance(x) if cfg.loss_scale == "fvu" else 1.0
                for m in self.members:
                    self._train_step(m, x)
                self.step += 1
                faults.reached("fit-step")
                bar.update(cfg.batch_size)
                if self.step % cfg.log_every == 0 or self.step == total:
                    now = time.perf_counter()
                    rate = (self.step * cfg.batch_size - tokens_last) / max(now - t_last, 1e-9)
                    t_last, tokens_last = now, self.step * cfg.batch_size
                    self._log_metrics(rate)
                if self.step % cfg.accum_steps == 0 and self.step < total:  # only between optimizer updates
                    self._checkpoint_if_due(stop)
        self.checkpoint(final=True)
        return {
            "steps": self.step,
            "tokens": self.step * cfg.batch_size,
            "skipped_batches": self.skipped,
            "saes": [str(self.out / s.name) for s in cfg.saes],
        }

    def _batch_variance(self, x: torch.Tensor) -> torch.Tensor:
        """E ||x - mean||^2 per token over the whole batch (every process's slice): the FVU loss's divisor."""
        c = self.batch_collective
        n = c.world * len(x)
        mean = c.sum(x.sum(0)) / n
        return (c.sum(((x - mean) ** 2).sum()) / n).clamp_min(1e-12)

    def _finite(self, x: torch.Tensor) -> bool:
        """False for a batch to skip (--nonfinite skip); raises for --nonfinite stop."""
        if bool(torch.isfinite(x).all()):
            return True
        if self.cfg.nonfinite == "stop":
            raise UsageError(
                f"batch {self.step} holds NaN or Inf activations; run `osae store verify`, or pass --nonfinite skip"
            )
        if self.batch_collective.world > 1:
            raise UsageError(
                "a batch holds NaN or Inf activations; several processes cannot skip it consistently: "
                "run `osae store verify` and train on a clean store"
            )
        self.skipped += 1
        log.warning("skipping batch %d: NaN or Inf activations (%d skipped so far)", self.step, self.skipped)
        return False

    def _loss_finite(self, m: Member, loss_value: float) -> bool:
        """False for a micro-batch whose loss is NaN or Inf on any process (every process skips it: no
        gradient reaches the weights); raises under --nonfinite stop, or when the loss stays non-finite."""
        bad = not math.isfinite(loss_value)
        if self.batch_collective.world > 1:
            bad = bool(self.batch_collective.max(torch.tensor([int(bad)])))
        if not bad:
            m.nonfinite_streak = 0
            return True
        m.nonfinite += 1
        m.nonfinite_streak += 1
        where = f"{m.spec.name}: the loss is not finite at step {self.step}"
        if self.cfg.nonfinite == "stop":
            raise UsageError(
                f"{where} (--nonfinite stop); the last checkpoint is intact: lower the learning rate and "
                f"start again with --overwrite, or pass --nonfinite skip"
            )
        if m.nonfinite_streak >= NONFINITE_STREAK:
            raise UsageError(
                f"{where}, and was for the last {NONFINITE_STREAK} batches: training has diverged; the last "
                f"checkpoint is intact: lower the learning rate and start again with --overwrite"
            )
        log.warning("%s: skipped (%d such batches so far)", where, m.nonfinite)
        return False

    def _checkpoint_if_due(self, stop: StopRequest) -> None:
        """Checkpoint every checkpoint_every steps, by time, and on a signal (then stop). Every process takes the
        same decision: the signal and the clock are reduced over processes."""
        now = time.perf_counter()
        limit = self.checkpoint_interval_s if self.checkpointed else self.first_checkpoint_s
        flags = torch.tensor([stop.signum, int(now - self._last_checkpoint_time >= limit)])
        signum, late = (int(v) for v in self.collective.max(flags))
        if signum or late or self.step % self.cfg.checkpoint_every == 0:
            self.checkpoint()
            self.checkpointed, self._last_checkpoint_time = True, time.perf_counter()
        if signum:
            barrier(self.world)  # no process leaves before process 0 has written the checkpoint
            raise RunInterrupted(
                f"interrupted at step {self.step} of {self.cfg.n_steps}: checkpoint written in "
                f"{self.out}; run the same command again to resume",
                signum,
            )

    def _train_step(self, m: Member, x: torch.Tensor) -> None:
        cfg, sae, step = self.cfg, m.sae, self.step
        dead = m.since_fired >= m.dead_window
        c = self.batch_collective
        ctx = StepContext(step=step, dead_F=dead, generator=m.generator, collective=c)
        with self.autocast():
            out = sae(x, ctx)
        loss = out.loss / self.loss_divisor
        loss_value = float(loss.detach())  # the step's one wait for the loss
        if not self._loss_finite(m, loss_value):
            if (step + 1) % cfg.accum_steps == 0 and any(p.grad is not None for p in sae.parameters()):
                self._update(m, step)  # the window's other micro-batches still count
            return
        (loss / cfg.accum_steps).backward()
        with torch.no_grad():
            sae.update_statistics({k: c.reduce(v, op) for k, (op, v) in out.stats.items()}, step)
            fires = out.code.fire_counts(sae.cfg.d_sae)  # one pass over the code gives all three
            fired = c.max(fires > 0)
            m.since_fired += x.shape[0] * c.world
            m.since_fired[fired] = 0
            sse = ((out.recon.float() - x) ** 2).sum()
        m.acc["fires"] = fires if m.acc["fires"] is None else m.acc["fires"] + fires
        m.acc["loss"] += loss_value * len(x)
        m.acc["sse"] += float(sse)
        m.acc["l0"] += float(fires.sum())
        m.acc["n"] += len(x)
        if (step + 1) % cfg.accum_steps:
            return
        self._update(m, step)

    def _update(self, m: Member, step: int) -> None:
        cfg, sae = self.cfg, m.sae
        self.batch_collective.mean_grads_(sae.parameters())
        sae.remove_parallel_grad_()
        f = sae.frozen_units(step)
        if f:
            frozen = {
                n: p.detach()[:f].clone() for n, p in (("W_enc", sae.W_enc), ("b_enc", sae.b_enc), ("W_dec", sae.W_dec))
            }
            for p in (sae.W_enc, sae.b_enc, sae.W_dec):
                if p.grad is not None:
                    p.grad[:f] = 0
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        for g in m.opt.param_groups:
            g["lr"] = cfg.lr_of(m.spec) * lr_factor(step, cfg)
        m.opt.step()
        m.opt.zero_grad(set_to_none=True)
        sae.normalize_decoder_()
        after_step(m.opt, sae.W_dec)
        if f:
            # The optimizer's state would keep moving a zero-gradient unit: restore the values (after the
            # renormalisation, which would nudge them by rounding) and pin the state's rows to them.
            with torch.no_grad():
                for name, p in (("W_enc", sae.W_enc), ("b_enc", sae.b_enc), ("W_dec", sae.W_dec)):
                    p[:f] = frozen[name]
                    freeze_rows_(m.opt, p, f)
        perm = sae.permutation_due(range(step + 1 - cfg.accum_steps, step + 1))
        if perm is not None:
            self.reorder(m, perm)

    def _whole_batch_sums(self, acc: dict) -> dict:
        """The metric sums of every process's slices (each process holds only its own)."""
        c = self.batch_collective
        if c.world == 1 or acc["fires"] is None:
            return acc
        scalars = c.sum(torch.tensor([acc["loss"], acc["sse"], acc["l0"], acc["n"]], dtype=torch.float64))
        loss, sse, l0, n = scalars.tolist()
        return {"loss": loss, "sse": sse, "l0": l0, "n": int(n), "fires": c.sum(acc["fires"])}

    @torch.no_grad()
    def reorder(self, m: Member, perm: torch.Tensor) -> None:
        """Permute latents with their Adam moments and dead counters (methods.md 1.6)."""
        m.sae.permute_(perm)
        for p in (m.sae.W_enc, m.sae.b_enc, m.sae.W_dec):
            st = m.opt.state.get(p, {})
            for key in latent_state_keys(m.opt):
                if key in st:
                    st[key].copy_(st[key][perm])
        m.since_fired.copy_(m.since_fired[perm])
        m.reorders += 1

    def _log_metrics(self, rate: float) -> None:
        """Append each SAE's line to its metrics.jsonl (and send them to the tracker, if any)."""
        lines = {}
        for m in self.members:
            a = self._whole_batch_sums(m.acc)
            m.acc = _empty_sums()
            if not a["n"] or not self.writes_saes:
                continue
            line = {
                "step": self.step,
                "tokens": self.step * self.cfg.batch_size,
                "loss": a["loss"] / a["n"],
                "sse_per_token": a["sse"] / a["n"],
                "fvu": a["sse"] / a["n"] / self.total_variance,
                "l0": a["l0"] / a["n"],
                "dead_fraction": float((m.since_fired >= m.dead_window).float().mean()),
                # dense: latents firing on more than 10% of the window's tokens
                "dense_fraction": float((a["fires"].float() / a["n"] > 0.1).float().mean()),
                "lr": m.opt.param_groups[0]["lr"],
                "tokens_per_s": rate,
                "nonfinite_skipped": m.nonfinite,
                "reorders": m.reorders,
            }
            m.directory.mkdir(parents=True, exist_ok=True)
            with open(m.directory / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            lines[m.spec.name] = line
        if self.tracked:
            if self.parallel == "sae":  # process 0's tracker reports every process's SAEs
                lines = {name: line for part in gather(lines, self.world) for name, line in part.items()}
            if self.tracker is not None:
                values = {f"{name}/{key}": line[key] for name, line in lines.items() for key in TRACKED_KEYS}
                self.tracker.log_scalars(values, self.step)
