"""HarvestConfig: everything that decides what a harvest writes."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from osae.config_io import known_fields, typed_fields
from osae.errors import UsageError
from osae.harvest.hooks import HOOKS
from osae.harvest.sources import STDLIB
from osae.harvest.windows import WINDOW_MODES

log = logging.getLogger(__name__)

# The arguments that define a store's content: a re-run with the same values resumes, others are refused.
IDENTITY = (
    "model_source",
    "revision",
    "hook",
    "layers",
    "context_size",
    "dataset",
    "text_column",
    "split",
    "windows",
    "include_bos",
    "tokens",
    "store_dtype",
)


@dataclass
class HarvestConfig:
    out: str
    """Store to write (local path or s3:// URL)."""
    layers: list[int] = field(default_factory=lambda: [3])
    """Block indices to hook (0-based); several are harvested in one forward pass."""
    hook: str = "resid_post"
    """resid_post (after the block), resid_pre (before it), attn_out or mlp_out."""
    model: str | None = None
    """Alias, local directory or hub id; None is the embedded default model."""
    revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    dtype: str = "auto"
    """Model compute dtype: auto (float32 on CPU, the model's own on GPU), float32, float16 or bfloat16."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N (with several processes, each takes its local GPU)."""
    trust_remote_code: bool = False
    """Run code from the model's repository (off unless asked)."""
    dataset: str = STDLIB
    """Hugging Face dataset id (streamed), a local .txt/.jsonl/.parquet file or directory, or python-stdlib."""
    text_column: str = "text"
    """Column (jsonl field, parquet column, dataset feature) holding the text."""
    split: str = "train"
    """Dataset split (hub datasets)."""
    dataset_config: str | None = None
    """Dataset configuration name (hub datasets)."""
    tokens: int = 1_000_000
    """Activations (stored rows, i.e. tokens) to harvest per hook."""
    context_size: int = 128
    """Tokens per window, BOS included."""
    batch_size: int = 32
    """Windows per forward pass."""
    windows: str = "packed"
    """packed: documents concatenated with EOS, every window full; document: one document per window."""
    include_bos: bool = False
    """Store the BOS position too (excluded by default: its activation is an outlier, huge in Gemma)."""
    store_dtype: str = "auto"
    """Stored activation dtype: auto (bfloat16 for bfloat16 models, else float16), float16, bfloat16, float32."""
    compressor: str = "none"
    """none, zstd, lz4 or blosc-zstd (docs/store-format.md: activations barely compress)."""
    overwrite: bool = False
    """Replace an existing store made with other arguments."""
    eval_fraction: float = 0.02
    """Share of chunks held out as the evaluation split."""

    def __post_init__(self) -> None:
        self.layers = sorted(set(int(x) for x in self.layers))
        if not self.layers:
            raise UsageError("give at least one --layer")
        if min(self.layers) < 0:
            raise UsageError(f"--layer must be >= 0; got {min(self.layers)}")
        if self.hook not in HOOKS:
            raise UsageError(f"unknown hook '{self.hook}'; choose from {', '.join(HOOKS)}")
        if self.tokens <= 0:
            raise UsageError(f"--tokens must be positive; got {self.tokens}")
        if self.context_size < 2:
            raise UsageError(f"--context-size must be at least 2; got {self.context_size}")
        if self.batch_size <= 0:
            raise UsageError(f"--batch-size must be positive; got {self.batch_size}")
        if self.windows not in WINDOW_MODES:
            raise UsageError(f"--windows must be one of {', '.join(WINDOW_MODES)}; got {self.windows!r}")
        if self.store_dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise UsageError(f"--store-dtype must be auto, float16, bfloat16 or float32; got {self.store_dtype!r}")
        if not 0 <= self.eval_fraction < 1:
            raise UsageError(f"--eval-fraction must be in [0, 1); got {self.eval_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, strict: bool = False) -> HarvestConfig:
        """From `to_dict`'s form. `strict` (a config the user gives: `--config FILE`): unknown keys are errors
        and values must have their fields' types; otherwise unknown keys are ignored with a warning."""
        if not isinstance(d, dict):
            raise UsageError(f"a harvest config must be a mapping of settings; got {type(d).__name__}")
        d = known_fields(cls, d, "harvest", strict=strict)
        if strict:
            d = typed_fields(cls, d, "harvest")
        if "out" not in d:
            raise UsageError("a harvest config needs out, the store to write (--out)")
        return cls(**d)
