"""TrainConfig: one run (one pass over the store) training one or many SAEs on the same batches.

Every SAE's settings are parsed into its architecture's config dataclass when the spec is made (from the
command line, a sweep file or `--config FILE`), so a whole run is checked before anything is written; the
store's width d_in is bound later (`SAESpec.build_config`, `TrainConfig.check_width`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from osae.config_io import known_fields, known_keys, read_config_file, typed_fields, typed_value
from osae.errors import UsageError
from osae.store import NORMALIZATIONS
from osae.train.arch_settings import parse_arch_config, setting_names
from osae.train.architectures import ARCHITECTURES, SAEConfig
from osae.train.optimizers import OPTIMIZERS, default_lr, is_schedule_free

DEAD_WINDOW_FIRINGS = 200  # the default dead window spans at least this many firings of an average latent
RESOLVED_KEY = "resolved"  # run.json: the values derived from the run (osae fit prints them), not settings

log = logging.getLogger(__name__)

SPEC_KEYS = ("arch", "seed", "config", "lr", "dead_window_tokens")


@dataclass
class SAESpec:
    """One SAE of a run: its architecture, seed (initialisation), architecture settings and learning rate.

    `config` may be given partly (the architecture's defaults fill the rest): after construction it holds
    every setting (what run.json records) and `arch_config` the same as the architecture's config
    dataclass, with d_in unbound."""

    arch: str
    seed: int = 0
    config: dict = field(default_factory=dict)
    """Architecture settings: fields of the architecture's config dataclass, without d_in."""
    lr: float | None = None
    """None: the optimizer's rule (osae.train.optimizers.default_lr; the Adams' fall with d_sae and grow
    with the batch)."""
    dead_window_tokens: int | None = None
    """None: the run's --dead-window-tokens, or its rule (TrainConfig.dead_window_of)."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UsageError(f"unknown architecture '{self.arch}'; choose from {', '.join(ARCHITECTURES)}")
        self.seed = typed_value(self.seed, int, "seed")
        self.lr = typed_value(self.lr, float | None, "lr")
        if self.lr is not None and self.lr <= 0:
            raise UsageError(f"lr must be positive; got {self.lr}")
        self.dead_window_tokens = typed_value(self.dead_window_tokens, int | None, "dead_window_tokens")
        if self.dead_window_tokens is not None and self.dead_window_tokens <= 0:
            raise UsageError(f"dead_window_tokens must be positive; got {self.dead_window_tokens}")
        config = self.config.settings() if isinstance(self.config, SAEConfig) else self.config
        self.arch_config: SAEConfig = parse_arch_config(self.arch, config)
        self.config = self.arch_config.settings()

    @classmethod
    def from_dict(cls, d: dict, *, strict: bool = True) -> SAESpec:
        """A spec from its run.json entry. Not `strict` (a run read back): unknown keys and settings are
        ignored with a warning."""
        if not isinstance(d, dict):
            raise UsageError(f"an SAE entry must be a mapping with {', '.join(SPEC_KEYS)}; got {d!r}")
        d = known_keys(d, list(SPEC_KEYS), "SAE entry", strict=strict)
        if "arch" not in d:
            raise UsageError(f"every SAE entry needs an 'arch'; got {d!r}")
        config = d.get("config", {})
        if not strict and d["arch"] in ARCHITECTURES and isinstance(config, dict):
            config = known_keys(config, setting_names(d["arch"]), d["arch"], strict=False)
        return cls(
            arch=d["arch"],
            seed=d.get("seed", 0),
            config=config,
            lr=d.get("lr"),
            dead_window_tokens=d.get("dead_window_tokens"),
        )

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "seed": self.seed,
            "config": dict(self.config),
            "lr": self.lr,
            "dead_window_tokens": self.dead_window_tokens,
        }

    @property
    def name(self) -> str:
        """Run-directory name: <arch>-K<d_sae>-k<k>-s<seed>, kNA where the architecture ignores k."""
        c = self.arch_config
        return f"{self.arch}-K{c.d_sae}-k{c.k if c.uses_k else 'NA'}-s{self.seed}"

    def build_config(self, d_in: int, n_steps: int | None = None) -> SAEConfig:
        """The architecture config for activations of width `d_in` (what the SAE module takes), with its
        step-counted settings resolved for a run of `n_steps` steps when given."""
        try:
            cfg = self.arch_config.bind(d_in)
            return cfg.for_run(n_steps) if n_steps is not None else cfg
        except ValueError as exc:
            raise UsageError(f"{self.name}: {exc}") from None

    def resolved_lr(self, optimizer: str, batch_size: int) -> float:
        """The peak learning rate under `optimizer` at `batch_size` rows per optimizer update: the given lr,
        or the optimizer's rule."""
        return self.lr if self.lr is not None else default_lr(optimizer, self.arch_config.d_sae, batch_size)


CPU_BF16_MIN_WEIGHTS = 256 * 4096


def cpu_has_fast_bf16() -> bool:
    """bf16 matmul instructions: AMX tiles (Intel Sapphire Rapids and later, a bf16 matmul about 3.5x fp32's)
    or AVX512-BF16 (AMD Zen 4 and later; there a TopK fit took 0.77x fp32's wall time, session 19)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(probe and probe() for probe in probes)  # private in torch 2.13: an absent probe means no


@dataclass
class TrainConfig:
    store: str
    """Activation store (path or URL)."""
    out: str
    """Run directory."""
    saes: list[SAESpec]
    """The SAEs trained on the same stream of batches."""
    hook: str | None = None
    """Hook to train on (None: the store's only hook)."""
    tokens: int = 10_000_000
    """Training tokens (each SAE sees all of them)."""
    batch_size: int = 4096
    """Tokens per step, over all processes."""
    accum_steps: int = 1
    """Micro-batches per optimizer update (HybridOrder's recipe uses 4)."""
    lr_warmup_steps: int | None = None
    """Linear warm-up, in steps (micro-batches); None: half the run under the Adams, 5% under the
    schedule-free optimizers, at most 1000."""
    lr_schedule: str = "constant-decay"
    """constant-decay (constant, then linear to 0 over the last lr_decay_frac) or cosine (to 0)."""
    lr_decay_frac: float = 0.2
    """Share of training at the end over which constant-decay decays to 0."""
    optimizer: str = "adam-lazy"
    """adam-lazy (Adam that moves a latent only in steps where it has a gradient), adam (torch's), signum-sf
    (sign descent under schedule-free averaging, sparsify's default) or adam-sf (schedule-free Adam); the
    schedule-free ones warm up but do not decay."""
    loss_scale: str = "mse"
    """mse (squared error per token) or fvu (divided by the batch's variance per token, as sparsify's loss)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    """Global gradient-norm clip per SAE (0: off)."""
    normalization: str = "scalar"
    """none, scalar (E||x||^2 = d_in) or standardize, from the store's statistics."""
    b_dec_init: str = "geometric_median"
    """geometric_median, mean or zero, from the first training rows."""
    dead_window_tokens: int | None = None
    """A latent that has not fired for this many tokens is dead (AuxK); None: per SAE, a fortieth of the run's
    tokens but at least 200 K / k (200 firings of an average latent), at least one batch, at most 10M."""
    data_seed: int = 0
    """Shuffle order of the stream every SAE of the run sees."""
    buffer_bytes: int = 2**30
    """Loader shuffle buffer."""
    parallel: str = "data"
    """Several processes: data (each holds a slice of every batch and every SAE step reduces over them) or sae
    (each reads whole batches and trains its own share of the SAEs: no communication per step)."""
    rank_data: str = "slice"
    """Several processes: slice (each takes its slice of the one-process batch: identical results for any
    process count) or chunks (each reads only its own chunks: less reading, other batches)."""
    checkpoint_every: int = 2000
    """Steps between checkpoints (and always at the end)."""
    log_every: int = 50
    """Steps between metrics lines."""
    nonfinite: str = "skip"
    """A batch with NaN/Inf: skip it (counted) or stop."""
    device: str = "auto"
    autocast: str = "auto"
    """bf16 autocast of the matmuls: auto (on GPU; on CPU with AMX or AVX512-BF16 for SAEs of 256 x 4096 and
    up), bf16 or none."""

    def __post_init__(self) -> None:
        self.saes = [s if isinstance(s, SAESpec) else SAESpec.from_dict(s) for s in self.saes]
        if not self.saes:
            raise UsageError("a run needs at least one SAE")
        names = [s.name for s in self.saes]
        if len(set(names)) != len(names):
            raise UsageError(f"two SAEs of the run share a name: {sorted(n for n in names if names.count(n) > 1)[0]}")
        for key in ("tokens", "batch_size", "accum_steps", "checkpoint_every", "log_every", "dead_window_tokens"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise UsageError(f"{key.replace('_', '-')} must be positive; got {getattr(self, key)}")
        if self.tokens < self.batch_size:
            raise UsageError(f"--tokens ({self.tokens}) must be at least one batch ({self.batch_size})")
        if self.lr_warmup_steps is not None and not 0 <= self.lr_warmup_steps <= self.n_steps:
            raise UsageError(
                f"--lr-warmup-steps must be in [0, {self.n_steps}] (the run's steps); got {self.lr_warmup_steps}; "
                f"leave it out to scale it with the run"
            )
        for name, window in [("--dead-window-tokens", self.dead_window_tokens)] + [
            (f"{s.name}: dead_window_tokens", s.dead_window_tokens) for s in self.saes
        ]:
            if window is not None and window > self.tokens:
                raise UsageError(
                    f"{name} {window} is longer than the run ({self.tokens} tokens): no latent could ever "
                    f"count as dead; give at most {self.tokens} or leave it out"
                )
        if self.normalization not in NORMALIZATIONS:
            raise UsageError(f"normalization must be one of {NORMALIZATIONS}; got {self.normalization!r}")
        if self.nonfinite not in ("skip", "stop"):
            raise UsageError(f"nonfinite must be skip or stop; got {self.nonfinite!r}")
        if self.lr_schedule not in ("constant-decay", "cosine"):
            raise UsageError(f"lr schedule must be constant-decay or cosine; got {self.lr_schedule!r}")
        if self.b_dec_init not in ("geometric_median", "mean", "zero"):
            raise UsageError(f"b_dec init must be geometric_median, mean or zero; got {self.b_dec_init!r}")
        if self.parallel not in ("data", "sae"):
            raise UsageError(f"parallel must be data or sae; got {self.parallel!r}")
        if self.rank_data not in ("slice", "chunks"):
            raise UsageError(f"rank_data must be slice or chunks; got {self.rank_data!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.loss_scale not in ("mse", "fvu"):
            raise UsageError(f"loss scale must be mse or fvu; got {self.loss_scale!r}")
        if self.autocast not in ("auto", "bf16", "none"):
            raise UsageError(f"autocast must be auto, bf16 or none; got {self.autocast!r}")
        self.adam_betas = tuple(self.adam_betas)

    @property
    def n_steps(self) -> int:
        return self.tokens // self.batch_size

    @property
    def warmup_steps(self) -> int:
        """The learning-rate warm-up this run uses."""
        if self.lr_warmup_steps is not None:
            return self.lr_warmup_steps
        # adam: half the run. Longer warm-ups kill fewer latents at equal peak rate, which lets the rate go
        # higher (5% -> 25% -> 40-50%, measured at 244 and 977 steps; docs/fit.md, sessions 10-11); the
        # schedule-free ones were measured at 5%
        share = 0.05 if is_schedule_free(self.optimizer) else 0.5
        return max(1, min(1000, round(share * self.n_steps)))

    def dead_window_of(self, spec: SAESpec) -> int:
        """The dead-latent window (tokens) of one SAE of this run."""
        if spec.dead_window_tokens is not None:
            return spec.dead_window_tokens
        if self.dead_window_tokens is not None:
            return self.dead_window_tokens
        # A fortieth of the run, but at least DEAD_WINDOW_FIRINGS firings of an average latent (which fires
        # once in K / k tokens), at least a batch, at most 10M and the run. At 1M tokens and K = 4096, 25k
        # left 0.7-2.1% dead in every architecture, 100k (a tenth) 1.5-5.3%; windows of fewer firings (10k
        # at K = 4096: 78; 25k at K = 16384: 49) made AuxK churn, and 20-29% ended dead (docs/fit.md, session 12)
        c = spec.arch_config
        floor = DEAD_WINDOW_FIRINGS * c.d_sae // c.k if c.uses_k else 0
        return max(self.batch_size, min(10_000_000, self.tokens, max(self.tokens // 40, floor)))

    def resolved(self, d_in: int, device_type: str = "cpu") -> dict:
        """Every value this run derives from its length, width and machine (run.json's "resolved", printed at
        the start)."""
        return {
            "steps": self.n_steps,
            "lr_warmup_steps": self.warmup_steps,
            "autocast": "bf16" if self.uses_bf16(device_type, d_in) else "none",
            "saes": {
                s.name: {
                    "lr": self.lr_of(s),
                    "dead_window_tokens": self.dead_window_of(s),
                    **{n: getattr(c, n) for n in c.step_settings},
                }
                for s in self.saes
                for c in [s.build_config(d_in, self.n_steps)]
            },
        }

    def as_resolved(self, resolved: dict) -> TrainConfig:
        """This run with the values a `resolved` record holds (learning rates, warm-up, dead windows, step
        settings, the autocast `auto` chose) set explicitly: a resumed run keeps what it derived when it
        started, whatever today's rules derive. SAEs and values the record lacks keep today's."""
        saes = []
        for s in self.saes:
            then = resolved.get("saes", {}).get(s.name, {})
            steps = {n: then[n] for n in s.arch_config.step_settings if n in then}
            window = then.get("dead_window_tokens", s.dead_window_tokens)
            saes.append(SAESpec(s.arch, s.seed, {**s.config, **steps}, then.get("lr", s.lr), window))
        return replace(
            self,
            saes=saes,
            lr_warmup_steps=resolved.get("lr_warmup_steps", self.lr_warmup_steps),
            autocast=resolved.get("autocast", self.autocast),  # a run resumed on another CPU keeps its precision
        )

    def uses_bf16(self, device_type: str, d_in: int) -> bool:
        """bf16 autocast of the encoder matmul: always on a GPU under auto; on a CPU under auto only where it
        was measured to pay without costing FVU (docs/fit.md): bf16 instructions (AMX, AVX512-BF16) and an SAE
        of at least d_in x K = 256 x 4096 (0.72x the fp32 step there on AMX, 0.88x at 256 x 1024; held-out FVU
        within 1%)."""
        if self.autocast != "auto":
            return self.autocast == "bf16"
        if device_type == "cuda":
            return True
        largest = max(d_in * s.arch_config.d_sae for s in self.saes)
        return device_type == "cpu" and cpu_has_fast_bf16() and largest >= CPU_BF16_MIN_WEIGHTS

    def lr_of(self, spec: SAESpec) -> float:
        """The peak learning rate of one SAE of this run."""
        return spec.resolved_lr(self.optimizer, self.batch_size * self.accum_steps)  # rows per update

    def to_dict(self) -> dict:
        """The resolved config, as run.json holds it (and `osae fit --config` reads it)."""
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        d["saes"] = [s.to_dict() for s in self.saes]
        return d

    @classmethod
    def from_dict(cls, d: dict, *, strict: bool = False) -> TrainConfig:
        """From `to_dict`'s form. `strict` (a config the user gives: `--config FILE`): unknown keys and
        settings are errors and values must have their fields' types; otherwise (run.json read back on
        --resume, written by this or an older osae) unknown keys are ignored with a warning."""
        if not isinstance(d, dict):
            raise UsageError(f"a run config must be a mapping of settings; got {type(d).__name__}")
        d = {k: v for k, v in d.items() if k != RESOLVED_KEY}  # derived values run.json records, not settings
        d = known_fields(cls, d, "run", strict=strict)
        saes = d.get("saes", [])
        if not isinstance(saes, list):
            raise UsageError(f"saes must be a list of SAE entries; got {saes!r}")
        d["saes"] = [s if isinstance(s, SAESpec) else SAESpec.from_dict(s, strict=strict) for s in saes]
        if strict:
            d = typed_fields(cls, {k: v for k, v in d.items() if k != "saes"}, "run") | {"saes": d["saes"]}
        missing = [k for k in ("store", "out") if k not in d]
        if missing:
            raise UsageError(f"a run config needs {' and '.join(missing)}")
        return cls(**d)

    def check_width(self, d_in: int) -> None:
        """Raise (naming the SAE) if any SAE's config is invalid for activations of width `d_in` or for the
        run's length."""
        for spec in self.saes:
            spec.build_config(d_in, self.n_steps)


def load_sweep(path: str | Path) -> list[SAESpec]:
    """A sweep file (JSON, or YAML by its extension): a list of {"arch", "seeds" or "seed", "lr",
    "dead_window_tokens", and the architecture's settings}. Every entry is parsed and checked; errors name
    the file and the entry."""
    entries = read_config_file(path, "sweep")
    if not isinstance(entries, list):
        raise UsageError(f"sweep file {path} must hold a JSON list of SAE entries")
    specs = []
    for i, e in enumerate(entries, 1):
        if not isinstance(e, dict):
            raise UsageError(f"sweep file {path}: entry {i} must be a mapping; got {e!r}")
        e = dict(e)
        arch = e.pop("arch", None)
        if arch is None:
            raise UsageError(f"every sweep entry needs an 'arch' ({path}: entry {i} has none)")
        if "seed" in e and "seeds" in e:
            raise UsageError(f"sweep file {path}: entry {i} gives both 'seed' and 'seeds'; give one")
        seeds = e.pop("seeds") if "seeds" in e else [e.pop("seed", 0)]
        lr, window = e.pop("lr", None), e.pop("dead_window_tokens", None)
        try:
            seeds = typed_value(seeds, list[int], "seeds")
            specs += [SAESpec(arch, seed, dict(e), lr, window) for seed in seeds]
        except ValueError as exc:
            raise UsageError(f"sweep file {path}: entry {i}: {exc}") from None
    return specs
