"""SAELens checkpoints: a directory with `cfg.json` and `sae_weights.safetensors` (SAE.save_model /
save_inference_model, sae_lens/saes/sae.py; constants SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME).

Read as SAELens' inference code computes them (sae_lens/saes/{standard,topk,jumprelu}_sae.py, v6):
    sae_in = x * s - b_dec * apply_b_dec_to_input          pre = sae_in @ W_enc + b_enc     (W_enc is D x F)
    standard: z = relu(pre)      topk: z = topk_k(pre) then relu      jumprelu: z = relu(pre) * 1[pre > threshold]
    x_hat = (z * f) @ W_dec + b_dec, then / s
Fields honoured:
- `architecture`: standard, topk, jumprelu (BatchTopK and Matryoshka-BatchTopK are saved for inference as
  jumprelu with one threshold for every latent); training checkpoints of `batchtopk` / `matryoshka_batchtopk`
  (save_model: a `topk_threshold` scalar) are read as that same jumprelu. Pre-6.0 configs (no
  metadata.sae_lens_version): `activation_fn: topk` with `activation_fn_kwargs.k`, hook_point / hook_name at top level.
- `apply_b_dec_to_input`: False is folded into b_enc.
- `rescale_acts_by_decoder_norm` (topk, batchtopk, matryoshka): folded, as SAELens' _fold_norm_topk does.
- `finetuning_scaling_factor` (v5; tensor `scaling_factor` or `finetuning_scaling_factor`): folded into W_dec.
- `normalize_activations`: none; expected_average_only_in with s from `activation_scaler.json` (training
  checkpoints), else estimated as SAELens does (sqrt(d_in) / mean ||x||) on the store's training split.
  constant_norm_rescale and layer_norm are per-token and are refused, as are hook_z reshaping and head hooks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from osae.errors import UsageError
from osae.foreign.common import Weights, as_f32, build_sae, foreign_config, read_json, require, unsupported
from osae.train.checkpoint import read_tensors

log = logging.getLogger(__name__)

CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
RUNNER_CONFIG = "runner_cfg.json"
SCALER = "activation_scaler.json"
SCALE_ROWS = 100_000  # training rows the norm scaling factor is estimated on when the checkpoint lacks it


def _settings(cfg: dict) -> dict:
    """The fields SAELens reads, from a v6 config (metadata block) or a pre-6.0 one (flat)."""
    meta = cfg.get("metadata") or {}
    arch = cfg.get("architecture", "standard")
    k = cfg.get("k")
    if cfg.get("activation_fn") == "topk" or cfg.get("activation_fn_str") == "topk":
        arch, k = "topk", (cfg.get("activation_fn_kwargs") or {}).get("k", k)
    norm = cfg.get("normalize_activations", "none")
    if isinstance(norm, bool):  # pre-6.0 booleans (handle_pre_6_0_config)
        norm = "expected_average_only_in" if norm else "none"
    return {
        "architecture": arch,
        "k": k,
        "activation_fn": cfg.get("activation_fn", cfg.get("activation_fn_str", "relu")),
        "normalize_activations": norm or "none",
        "apply_b_dec_to_input": cfg.get("apply_b_dec_to_input", True),
        "rescale": bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        "finetuning": bool(cfg.get("finetuning_scaling_factor", False)),
        "hook": meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point"),
        "head": meta.get("hook_head_index", cfg.get("hook_head_index", cfg.get("hook_point_head_index"))),
        "reshape": cfg.get("reshape_activations", "none"),
    }


def load_saelens(path: Path, device="cpu", store=None) -> tuple:
    cfg = read_json(path / CONFIG)
    s = _settings(cfg)
    if s["reshape"] == "hook_z" or (s["hook"] or "").endswith("hook_z"):
        raise unsupported(path, "a hook_z SAE (per-head attention outputs)", "osae stores hold flat hook outputs")
    if s["head"] is not None:
        raise unsupported(path, f"an SAE of one attention head (hook_head_index={s['head']})")
    t = read_tensors(path / WEIGHTS, "rewrite it with SAELens' save_model")
    w = Weights(
        as_f32(require(t, "W_enc", path)).T.contiguous(),  # SAELens keeps W_enc as (d_in, d_sae)
        as_f32(require(t, "b_enc", path)),
        as_f32(require(t, "W_dec", path)),
        as_f32(require(t, "b_dec", path)),
    )
    arch = s["architecture"]
    config: dict = {}
    if arch == "standard":
        if s["activation_fn"] not in ("relu", None):
            raise unsupported(path, f"a standard SAE with activation_fn={s['activation_fn']!r}", "only relu is")
        kind = "relu"
    elif arch == "topk":
        if s["k"] is None:
            raise UsageError(f"{path}/{CONFIG} is a topk SAE without k")
        kind, config = "topk", {"k": int(s["k"])}
    elif arch == "jumprelu":
        kind, w.threshold = "jumprelu", as_f32(require(t, "threshold", path))
    elif arch in ("batchtopk", "matryoshka_batchtopk"):
        # A training checkpoint: inference uses the running threshold for every latent (what
        # BatchTopKTrainingSAE.process_state_dict_for_saving_inference writes).
        kind, theta = "jumprelu", float(require(t, "topk_threshold", path))
    else:
        raise unsupported(path, f"SAELens architecture {arch!r}", "osae reads standard, topk, jumprelu, batchtopk")
    w.check(path, cfg.get("d_in"), cfg.get("d_sae"))
    if s["rescale"] and arch != "standard":
        w.fold_decoder_norm()
    if arch in ("batchtopk", "matryoshka_batchtopk"):
        # set after the fold: the running threshold already compares the rescaled pre-activations
        w.threshold = torch.full((w.d_sae,), theta)
    if not s["apply_b_dec_to_input"]:
        w.fold_input_bias()
    factor = t.get("finetuning_scaling_factor", t.get("scaling_factor"))
    if factor is not None and not torch.allclose(factor, torch.ones_like(factor)):
        if not s["finetuning"]:
            raise UsageError(f"{path}: a scaling_factor tensor is saved but finetuning_scaling_factor is false")
        w.scale_decoder_rows(as_f32(factor))
    notes: list[str] = []
    normalization = _normalization(path, s["normalize_activations"], s["hook"], w.d_in, store, notes)
    sae = build_sae(kind, w, device, **config)
    runner = read_json(path / RUNNER_CONFIG) if (path / RUNNER_CONFIG).is_file() else {}
    source = {"cfg": cfg, **({"runner_cfg": runner} if runner else {})}
    seed = runner.get("seed")
    return sae, foreign_config(
        "saelens", path, sae, hook=s["hook"], normalization=normalization, seed=seed, source_config=source, notes=notes
    )


def _normalization(path: Path, kind: str, hook, d_in: int, store, notes: list[str]) -> dict:
    if kind == "none":
        return {"kind": "none"}
    if kind != "expected_average_only_in":
        raise unsupported(path, f"normalize_activations={kind!r}", "osae reads none and expected_average_only_in")
    scaler = read_json(path / SCALER).get("scaling_factor") if (path / SCALER).is_file() else None
    if scaler is not None:
        return {"kind": "scalar", "scale": float(scaler)}
    if store is None or hook not in store.hooks or store.d_model(hook) != d_in:
        raise UsageError(
            f"{path} was trained on activations scaled to E||x|| = sqrt(d_in) and saved no scaling factor "
            f"({SCALER}); pass the store of hook '{hook}' to estimate it, or fold it with SAELens first"
        )
    scale = estimate_scale(store, hook, d_in)
    notes.append(f"normalize_activations=expected_average_only_in: scale {scale:.6g} estimated on {store.loc.display}")
    return {"kind": "scalar", "scale": scale}


@torch.no_grad()
def estimate_scale(store, hook: str, d_in: int, max_rows: int = SCALE_ROWS) -> float:
    """SAELens' ActivationScaler.estimate_scaling_factor: sqrt(d_in) / mean ||x|| over training rows."""
    from osae.store import iter_rows

    total, n = 0.0, 0
    for rows in iter_rows(store, hook, "train", max_tokens=max_rows):
        total += float(rows.x.float().norm(dim=1).sum())
        n += len(rows)
    if n == 0 or total == 0:
        raise UsageError(f"{store.loc.display} has no training rows of '{hook}' to estimate the scaling factor on")
    return float(d_in**0.5 / (total / n))
