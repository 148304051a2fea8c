"""`osae export --format saelens|sparsify`: a directory SAELens (v6) loads with `SAE.load_from_disk`, or one
sparsify loads with `Sae.load_from_disk` (SparseCoder).

The activation scale is folded in (methods.md 1.2), so the exported SAE reads raw activations
(`normalize_activations: "none"`). Per-token TopK codes (topk, osae, token-selection Matryoshka) export as
SAELens' `topk`; BatchTopK-style codes, evaluated with one global threshold, as `jumprelu` with that
threshold for every latent (z = pre * 1[pre > theta] is exactly a JumpReLU); ReLU codes as `standard`.
Which one is the config class's `saelens_architecture()` (osae.train.architectures), not a name test here.
sparsify has per-token TopK only, so only SAEs whose SAELens equivalent is `topk` export to it: `cfg.json` is
SparseCoderConfig's fields plus `d_in` (sparsify/config.py, SparseCoder.save_to_disk), `sae.safetensors` holds
exactly SparseCoder's state dict (encoder.weight, encoder.bias, W_dec, b_dec), since its loader is strict. Name
the output directory after the hookpoint (e.g. `layers.6`): sparsify keys SAEs by that directory name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from osae.errors import UsageError
from osae.train.checkpoint import load_frozen

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CONFIG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"
SPARSIFY_CONFIG = "cfg.json"
EXPORT_FORMATS = ("saelens", "sparsify")


def export(checkpoint, out, format: str = "saelens") -> dict:
    """Write `checkpoint` in `format` (saelens or sparsify)."""
    if format == "saelens":
        return export_saelens(checkpoint, out)
    if format == "sparsify":
        return export_sparsify(checkpoint, out)
    raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}; got {format!r}")


def _folded(checkpoint, target: str):
    """(sae reading raw activations, config, folded scale): the activation scale folded in (methods.md 1.2)."""
    sae, config = load_frozen(checkpoint)
    norm = config.get("normalization", {"kind": "none"})
    if norm.get("kind") == "standardize":
        raise UsageError(
            f"a checkpoint trained on standardized activations has no {target} equivalent; "
            "train with --normalization scalar or none to export it"
        )
    scale = float(norm.get("scale", 1.0)) if norm.get("kind") == "scalar" else 1.0
    sae.fold_scale_(scale)
    return sae, config, scale


def export_sparsify(checkpoint, out) -> dict:
    sae, config, _ = _folded(checkpoint, "sparsify")
    if sae.cfg.saelens_architecture() != "topk":
        raise UsageError(
            f"{checkpoint} is a {config['architecture']} SAE whose inference code is not a per-token TopK; "
            f"sparsify has no equivalent: export it with --format saelens"
        )
    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    cfg = {  # SparseCoderConfig (sparsify/config.py) and d_in, as SparseCoder.save_to_disk writes them
        "activation": "topk",
        "expansion_factor": max(1, d_sae // d_in),  # read only when num_latents is 0
        "normalize_decoder": True,
        "num_latents": d_sae,
        "k": int(sae.cfg.k),
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d_in,
    }
    weights = {
        "encoder.weight": sae.W_enc.detach().contiguous().float(),  # nn.Linear(d_in, F): (F, D), as osae's
        "encoder.bias": sae.b_enc.detach().contiguous().float(),
        "W_dec": sae.W_dec.detach().contiguous().float(),
        "b_dec": sae.b_dec.detach().contiguous().float(),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / SPARSIFY_WEIGHTS))
    (out / SPARSIFY_CONFIG).write_text(json.dumps(cfg, indent=1))
    return {"out": str(out), "architecture": "topk"}


def export_saelens(checkpoint, out) -> dict:
    sae, config, scale = _folded(checkpoint, "SAELens")
    arch = config["architecture"]
    kind = sae.cfg.saelens_architecture()  # each config class says which SAELens code equals its inference code
    extra = {"k": int(sae.cfg.k)} if kind == "topk" else {}
    if kind == "jumprelu" and float(sae.threshold) <= 0:
        raise UsageError(f"{checkpoint} has no inference threshold yet (trained fewer steps than threshold_start)")
    weights = {
        "W_enc": sae.W_enc.detach().T.contiguous().float(),  # SAELens stores (d_in, d_sae)
        "W_dec": sae.W_dec.detach().contiguous().float(),
        "b_enc": sae.b_enc.detach().contiguous().float(),
        "b_dec": sae.b_dec.detach().contiguous().float(),
    }
    if kind == "jumprelu":
        weights["threshold"] = torch.full((sae.cfg.d_sae,), float(sae.threshold))
    hook_info = config.get("hook_info", {})
    cfg = {
        "architecture": kind,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **extra,
        "metadata": {
            "hook_name": config.get("hook"),
            "hook_layer": hook_info.get("layer"),
            "hook_head_index": None,
            "model_name": None,
            "context_size": None,
            "prepend_bos": True,
            "dataset_path": config.get("store"),
            "sae_lens_training_version": None,
            "osae": {
                "architecture": arch,
                "checkpoint": str(checkpoint),
                "store_fingerprint": config.get("store_fingerprint"),
                "folded_scale": scale,
                "step": config.get("step"),
            },
        },
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / SAELENS_WEIGHTS))
    (out / SAELENS_CONFIG).write_text(json.dumps(cfg, indent=1))
    return {"out": str(out), "architecture": kind}
