"""EleutherAI sparsify checkpoints: one hookpoint directory `<run>/<hookpoint>/` (or `<hookpoint>/seed<N>/` when
a run trains several seeds) with `cfg.json` (SparseCoderConfig.to_dict() plus `d_in`) and `sae.safetensors`
(SparseCoder.save_to_disk: encoder.weight (F, D), encoder.bias (F,), W_dec (F, D), b_dec (D,); W_skip with a
skip connection). The run's `config.json` (TrainConfig) sits beside the hookpoint directories.

sparsify's encode/decode (sparsify/sparse_coder.py, fused_encoder.py):
    z = topk_k(relu(encoder(x - b_dec)))        x_hat = z @ W_dec + b_dec
which is osae's topk exactly. `multi_topk` and `normalize_decoder` shape training only. Refused: transcoders
(`transcode`), skip connections, and the `groupmax` activation. sparsify does not normalise activations.
"""

from __future__ import annotations

import re
from pathlib import Path

from osae.errors import UsageError
from osae.foreign.common import Weights, as_f32, build_sae, foreign_config, module_hook, read_json, require, unsupported
from osae.train.checkpoint import read_tensors

CONFIG = "cfg.json"
WEIGHTS = "sae.safetensors"
RUN_CONFIG = "config.json"


def hookpoint_and_seed(path: Path) -> tuple[str, int | None, Path]:
    """(hookpoint, seed or None, run directory) from sparsify's directory layout."""
    m = re.fullmatch(r"seed(\d+)", path.name)
    if m:  # trainer.py: f"{hook}/seed{seed}" when len(init_seeds) > 1
        return path.parent.name, int(m.group(1)), path.parent.parent
    return path.name, None, path.parent


def load_sparsify(path: Path, device="cpu") -> tuple:
    cfg = read_json(path / CONFIG)
    if cfg.get("transcode"):
        raise unsupported(path, "a sparsify transcoder (transcode: true)", "osae evaluates autoencoders")
    if cfg.get("skip_connection"):
        raise unsupported(path, "a sparsify coder with a skip connection (skip_connection: true)")
    if cfg.get("activation", "topk") != "topk":
        raise unsupported(path, f"sparsify activation {cfg.get('activation')!r}", "only topk is")
    t = read_tensors(path / WEIGHTS, "rewrite it with sparsify's save_to_disk")
    if "W_skip" in t:
        raise unsupported(path, "a sparsify coder with a skip connection (W_skip)")
    d_in = int(require(cfg, "d_in", path / CONFIG))
    d_sae = int(cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32)))
    w = Weights(
        as_f32(require(t, "encoder.weight", path)),
        as_f32(require(t, "encoder.bias", path)),
        as_f32(require(t, "W_dec", path)),
        as_f32(require(t, "b_dec", path)),
    ).check(path, d_in, d_sae)
    k = int(cfg.get("k", 32))
    if not 1 <= k <= d_sae:
        raise UsageError(f"{path}/{CONFIG}: k={k} must be in [1, num_latents={d_sae}]")
    sae = build_sae("topk", w, device, k=k)
    hookpoint, seed, run = hookpoint_and_seed(path)
    hook, _ = module_hook(hookpoint)
    run_cfg = read_json(run / RUN_CONFIG) if (run / RUN_CONFIG).is_file() else {}
    if seed is None and len(run_cfg.get("init_seeds") or []) == 1:
        seed = int(run_cfg["init_seeds"][0])
    source = {"cfg": cfg, "hookpoint": hookpoint, **({"run_config": run_cfg} if run_cfg else {})}
    notes = [] if hook != hookpoint else [f"sparsify hookpoint '{hookpoint}' has no TransformerLens name; kept as is"]
    return sae, foreign_config("sparsify", path, sae, hook=hook, seed=seed, source_config=source, notes=notes)
