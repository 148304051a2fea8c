"""Which model to harvest: a short alias, a local directory, a hub id, or the embedded default.

Loading uses transformers' Auto classes; `trust_remote_code` stays off unless the user asks for it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from osae.errors import UsageError

log = logging.getLogger(__name__)

EMBEDDED_NAME = "osae-stdlib"
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "models" / "stdlib-neox"

ALIASES = {
    **{
        f"pythia-{s}": f"EleutherAI/pythia-{s}"
        for s in ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
    },
    **{
        f"pythia-{s}-deduped": f"EleutherAI/pythia-{s}-deduped"
        for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
    },
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-9b": "google/gemma-2-9b",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    EMBEDDED_NAME: str(EMBEDDED_DIR),
    "default": str(EMBEDDED_DIR),
}

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for
    source: str  # hub id or directory it was loaded from
    revision: str | None  # resolved commit for hub models
    dtype: torch.dtype
    device: torch.device

    def describe(self) -> dict:
        cfg = self.model.config
        return {
            "name": self.name,
            "source": self.source,
            "revision": self.revision,
            "dtype": str(self.dtype).replace("torch.", ""),
            "architecture": (cfg.architectures or [type(self.model).__name__])[0],
            "model_type": cfg.model_type,
            "n_layers": n_layers(self.model),
            "d_model": int(cfg.hidden_size),
        }


def offline_choices() -> str:
    return (
        f"offline choices: the embedded default (omit --model, or --model {EMBEDDED_NAME}) or a local "
        f"model directory (--model /path/to/model)"
    )


def resolve_model_name(name: str | None) -> str:
    """Alias -> hub id or directory; a directory or hub-like id is returned as is."""
    if name is None:
        return str(EMBEDDED_DIR)
    if name in ALIASES:
        return ALIASES[name]
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    if name.startswith((".", "/", "~")):
        raise UsageError(f"no model directory at {name}; {offline_choices()}")
    if name.count("/") != 1:
        raise UsageError(
            f"unknown model '{name}': not an alias ({', '.join(sorted(ALIASES))}), "
            f"a local directory or a hub id like org/name"
        )
    return name


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return dev


def pick_dtype(dtype: str, device: torch.device, config_dtype) -> torch.dtype:
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32  # half-precision matmuls are slow or missing on many CPUs
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype, None)
    return config_dtype if config_dtype in (torch.float16, torch.bfloat16) else torch.float32


def load_model(
    name: str | None,
    *,
    revision: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode. Errors name the offline choices."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # osae shows its own progress
    source = resolve_model_name(name)
    dev = pick_device(device)
    is_local = Path(source).exists()
    if not is_local and not hub_offline() and not hub_reachable():
        # Without this, the hub client retries for about half a minute before failing; cached models still load.
        go_offline()
    if source == str(EMBEDDED_DIR) and not (EMBEDDED_DIR / "config.json").exists():
        raise UsageError(
            f"the embedded model is missing from {EMBEDDED_DIR}; reinstall osae or run scripts/train_default_model.py"
        )
    try:
        config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        torch_dtype = pick_dtype(dtype, dev, getattr(config, "dtype", None) or getattr(config, "torch_dtype", None))
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if "trust_remote_code" in str(exc):
            raise UsageError(
                f"model '{name}' needs custom code from its repository; pass --trust-remote-code if you trust it"
            ) from None
        where = "local directory" if is_local else "the Hugging Face hub"
        raise UsageError(
            f"cannot load model '{name or EMBEDDED_NAME}' from {where} ({first}); {offline_choices()}"
        ) from None
    model.to(dev).eval()
    model.requires_grad_(False)
    resolved = getattr(config, "_commit_hash", None) if not is_local else None
    return LoadedModel(model, tokenizer, name or EMBEDDED_NAME, source, resolved or revision, torch_dtype, dev)


def load_tokenizer(name: str | None, *, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer alone (for showing stored token ids as text). Errors name the offline choices."""
    from transformers import AutoTokenizer

    source = resolve_model_name(name)
    if not Path(source).exists() and not hub_offline() and not hub_reachable():
        go_offline()
    try:
        return AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"cannot load the tokenizer of '{name or EMBEDDED_NAME}' ({first}); {offline_choices()}"
        ) from None


def n_layers(model) -> int:
    cfg = model.config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    raise UsageError(f"cannot tell how many layers {type(model).__name__} has")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint (HF_ENDPOINT or the default) accepts a TCP connection."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    import huggingface_hub.constants as hub_constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
