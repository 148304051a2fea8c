"""Frozen checkpoints (config.json + sae.safetensors) and resumable training states, written so that a
crash, a kill or a full disk never leaves a broken one.

Frozen checkpoint: `sae.safetensors` and `config.json` are each written to a temporary name and renamed;
the config records the weights' sha256, so a torn pair (a crash between the two renames) is detected.
Training state: a new generation directory `state/g<step>/` is written completely; the run's state file
(written atomically after every SAE's generation) names the current step, and only then are older
generations removed. Nothing is pickled.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save_file as _save_file

from osae import __version__
from osae.errors import CheckpointError
from osae.store import file_sha256
from osae.train.architectures import ARCHITECTURES, INFERENCE_ARCHITECTURES, SAE

CHECKPOINT_FORMAT = 1
WEIGHTS = "sae.safetensors"
CONFIG = "config.json"
STATE_DIR = "state"


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_file(tensors: dict, path: str) -> None:
    """safetensors' save_file, with its I/O failures raised as OSError (it raises its own error type)."""
    try:
        _save_file(tensors, path)
    except Exception as exc:  # SafetensorError is not importable by a stable name across versions
        text = str(exc)
        if "No space left" in text or "os error 28" in text:
            raise OSError(errno.ENOSPC, f"no space left writing {path}") from None
        if "I/O error" in text:
            raise OSError(errno.EIO, f"{text} ({path})") from None
        raise


def read_tensors(path: Path, remedy: str) -> dict[str, torch.Tensor]:
    """safetensors' load_file, with a truncated or garbled file raised as a CheckpointError naming it."""
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError is not importable by a stable name across versions
        raise CheckpointError(f"{path} is not a readable safetensors file ({str(exc)[:120]}); {remedy}") from None


def disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def save_frozen(sae: SAE, directory: Path, meta: dict) -> None:
    """Write `sae` and its config (architecture, hyperparameters, normalization, store fingerprint, ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS
    tmp = directory / (WEIGHTS + ".tmp")
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
        raise CheckpointError(f"refusing to write non-finite weights to {directory}; the previous checkpoint is kept")
    try:
        save_file(tensors, str(tmp))
    except OSError:
        tmp.unlink(missing_ok=True)  # do not leave a half file taking the space that was missing
        raise
    config = {
        "format_version": CHECKPOINT_FORMAT,
        "osae_version": __version__,
        "architecture": sae.ARCHITECTURE,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "arch_config": sae.cfg.to_dict(),
        **meta,
        "weights_sha256": file_sha256(tmp),
    }
    os.replace(tmp, weights)
    _atomic_json(directory / CONFIG, config)


def load_frozen(directory, device: str | torch.device = "cpu") -> tuple[SAE, dict]:
    """(sae in eval mode, config dict) from a frozen checkpoint directory."""
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG, directory / WEIGHTS
    if not cfg_path.exists() or not w_path.exists():
        raise CheckpointError(f"{directory} is not an osae checkpoint (needs {CONFIG} and {WEIGHTS})")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({exc})") from None
    if config.get("format_version") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{directory} has checkpoint format {config.get('format_version')}; this osae reads {CHECKPOINT_FORMAT}"
        )
    if config.get("weights_sha256") and config["weights_sha256"] != file_sha256(w_path):
        raise CheckpointError(
            f"{directory}: {WEIGHTS} does not match its {CONFIG} (interrupted write); "
            f"re-run `osae fit --resume` on its run directory to rewrite it"
        )
    arch = config["architecture"]
    known = {**ARCHITECTURES, **INFERENCE_ARCHITECTURES}  # a permuted foreign JumpReLU SAE is inference-only
    if arch not in known:
        raise CheckpointError(f"{directory} holds an unknown architecture '{arch}'")
    cfg_cls, sae_cls = known[arch]
    sae = sae_cls(cfg_cls.from_dict(config["arch_config"]).frozen())
    sae.load_state_dict(read_tensors(w_path, "the checkpoint is torn: re-run `osae fit --resume` on its run directory"))
    return sae.to(device).eval(), config


# -- training states -----------------------------------------------------------------------------
def optimizer_tensors(opt: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict, dict]:
    """Adam's state as flat tensors (name.exp_avg, ...) plus the JSON part (param groups)."""
    tensors = {}
    for p, st in opt.state.items():
        for key, val in st.items():
            tensors[f"{names[id(p)]}.{key}"] = (
                val.detach().contiguous().cpu() if torch.is_tensor(val) else torch.tensor(val)
            )
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return tensors, {"param_groups": groups}


def load_optimizer(opt: torch.optim.Optimizer, names: dict[int, str], tensors: dict, meta: dict) -> None:
    for group, saved in zip(opt.param_groups, meta["param_groups"]):
        group.update({k: v for k, v in saved.items() if k in group})
    for group in opt.param_groups:
        for p in group["params"]:
            prefix = names[id(p)] + "."
            st = {k[len(prefix) :]: v.to(p.device) for k, v in tensors.items() if k.startswith(prefix)}
            if st:
                opt.state[p] = st


def save_state(directory: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write generation `state/g<step>/` completely. The run's own state file, written after every SAE's,
    says which generation is current; older ones are removed by `prune_states` only after that."""
    gen = directory / STATE_DIR / f"g{step:012d}"
    if gen.exists():
        shutil.rmtree(gen)
    gen.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(gen / "tensors.safetensors"))
    _atomic_json(gen / "meta.json", meta)


def prune_states(directory: Path, keep_step: int) -> None:
    root = directory / STATE_DIR
    for old in root.iterdir() if root.exists() else []:
        if old.is_dir() and old.name != f"g{keep_step:012d}":
            shutil.rmtree(old, ignore_errors=True)


def load_state(directory: Path, step: int) -> tuple[dict[str, torch.Tensor], dict]:
    gen = directory / STATE_DIR / f"g{step:012d}"
    if not (gen / "meta.json").exists():
        raise CheckpointError(f"{directory} has no training state for step {step}; it cannot be resumed")
    tensors = read_tensors(gen / "tensors.safetensors", "this training state is torn and the run cannot be resumed")
    return tensors, json.loads((gen / "meta.json").read_text())
