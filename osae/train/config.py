"""TrainConfig: one run (one pass over the store) training one or many SAEs on the same batches."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from osae.config_io import known_fields
from osae.store.normalize import NORMALIZATIONS
from osae.train.architectures import ARCHITECTURES

log = logging.getLogger(__name__)


@dataclass
class SAESpec:
    """One SAE of a run: its architecture, seed (initialisation) and architecture settings."""

    arch: str
    seed: int = 0
    config: dict = field(default_factory=dict)
    lr: float | None = None
    """None: 2e-4 / sqrt(d_sae / 2^14) (dictionary_learning's rule)."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture '{self.arch}'; choose from {', '.join(ARCHITECTURES)}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive; got {self.lr}")

    @property
    def name(self) -> str:
        c = self.config
        k = c.get("k", 32) if self.arch not in ("relu", "hybridorder") else "NA"
        return f"{self.arch}-K{c.get('d_sae', 4096)}-k{k}-s{self.seed}"

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.config.get("d_sae", 4096) / 2**14)


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
    lr_warmup_steps: int = 1000
    """Linear warm-up, in steps (micro-batches)."""
    lr_schedule: str = "constant-decay"
    """constant-decay (constant, then linear to 0 over the last lr_decay_frac) or cosine (to 0)."""
    lr_decay_frac: float = 0.2
    """Share of training at the end over which constant-decay decays to 0."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    """Global gradient-norm clip per SAE (0: off)."""
    normalization: str = "scalar"
    """none, scalar (E||x||^2 = d_in) or standardize, from the store's statistics."""
    b_dec_init: str = "geometric_median"
    """geometric_median, mean or zero, from the first training rows."""
    dead_window_tokens: int = 10_000_000
    """A latent that has not fired for this many tokens is dead (AuxK)."""
    data_seed: int = 0
    """Shuffle order of the stream every SAE of the run sees."""
    buffer_bytes: int = 2**30
    """Loader shuffle buffer."""
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
    """bf16 autocast of the matmuls: auto (on GPU only), bf16 or none."""

    def __post_init__(self) -> None:
        self.saes = [s if isinstance(s, SAESpec) else SAESpec(**s) for s in self.saes]
        if not self.saes:
            raise ValueError("a run needs at least one SAE")
        names = [s.name for s in self.saes]
        if len(set(names)) != len(names):
            raise ValueError(f"two SAEs of the run share a name: {sorted(n for n in names if names.count(n) > 1)[0]}")
        for key in ("tokens", "batch_size", "accum_steps", "checkpoint_every", "log_every", "dead_window_tokens"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key.replace('_', '-')} must be positive; got {getattr(self, key)}")
        if self.tokens < self.batch_size:
            raise ValueError(f"--tokens ({self.tokens}) must be at least one batch ({self.batch_size})")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}; got {self.normalization!r}")
        if self.nonfinite not in ("skip", "stop"):
            raise ValueError(f"nonfinite must be skip or stop; got {self.nonfinite!r}")
        if self.lr_schedule not in ("constant-decay", "cosine"):
            raise ValueError(f"lr schedule must be constant-decay or cosine; got {self.lr_schedule!r}")
        if self.b_dec_init not in ("geometric_median", "mean", "zero"):
            raise ValueError(f"b_dec init must be geometric_median, mean or zero; got {self.b_dec_init!r}")
        if self.rank_data not in ("slice", "chunks"):
            raise ValueError(f"rank_data must be slice or chunks; got {self.rank_data!r}")
        if self.autocast not in ("auto", "bf16", "none"):
            raise ValueError(f"autocast must be auto, bf16 or none; got {self.autocast!r}")
        self.adam_betas = tuple(self.adam_betas)

    @property
    def n_steps(self) -> int:
        return self.tokens // self.batch_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**known_fields(cls, d, "training"))


def load_sweep(path: str | Path) -> list[SAESpec]:
    """A sweep file: a JSON list of {"arch", "seeds" or "seed", "lr", and architecture settings}."""
    try:
        entries = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no sweep file at {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"sweep file {path} is not valid JSON ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError(f"sweep file {path} must hold a JSON list of SAE entries")
    specs = []
    for e in entries:
        e = dict(e)
        arch = e.pop("arch", None)
        if arch is None:
            raise ValueError(f"every sweep entry needs an 'arch' ({path})")
        seeds = e.pop("seeds", [e.pop("seed", 0)])
        lr = e.pop("lr", None)
        for seed in seeds:
            specs.append(SAESpec(arch=arch, seed=int(seed), config=dict(e), lr=lr))
    return specs
