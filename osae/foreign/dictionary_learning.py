"""saprmarks/dictionary_learning checkpoints: a trainer directory with `ae.pt` (a state dict saved by
torch.save) and `config.json` ({"trainer": trainer.config, "buffer": ...}; training.py). `ae.pt` is read with
torch.load(weights_only=True) and nothing else: a file that needs pickle is refused.

Dictionaries (dictionary_learning/dictionary.py and trainers/*.py), by `trainer.dict_class` (r = relu(pre)):
    AutoEncoder             bias, encoder.{weight,bias}, decoder.weight (D, F)   z = relu(enc(x - bias))
                                                                                 x_hat = dec(z) + bias
    AutoEncoderNew          encoder.{weight,bias}, decoder.{weight,bias}         z = relu(enc(x)), x_hat = dec(z)
    AutoEncoderTopK         encoder.*, decoder.weight, b_dec, k, threshold       z = topk_k(relu(enc(x - b_dec)))
    BatchTopKSAE            the same keys                                        z = r * 1[r > threshold]
    MatryoshkaBatchTopKSAE  W_enc (D, F), b_enc, W_dec (F, D), b_dec, k, threshold, group_sizes: as BatchTopKSAE
    JumpReluAutoEncoder     W_enc (D, F), b_enc, W_dec, b_dec, threshold (F,)    z = relu(p * 1[p > threshold]),
                                                                                 p = x W_enc + b_enc
Encoders without the b_dec subtraction are folded (common.Weights.fold_input_bias). The default inference
paths are read: AutoEncoderTopK encodes per token (use_threshold=False), BatchTopK and Matryoshka with the
threshold (use_threshold=True). Final `ae.pt` files have the normalisation factor folded in (scale_biases);
a backup `ae.pt` ({"ae", "norm_factor", "step", ...}) is in normalised units and is read with that factor.
GatedAutoEncoder is refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from osae.errors import CheckpointError, UsageError
from osae.foreign.common import Weights, as_f32, build_sae, foreign_config, read_json, require, unsupported

STATE = "ae.pt"
CONFIG = "config.json"


def read_state(path: Path) -> dict:
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} cannot be read as plain tensors (torch.load weights_only=True: {first}); osae does not "
            f"unpickle files: re-save it as a state dict of tensors"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return obj


def _hook(trainer: dict) -> tuple[str | None, int | None]:
    layer, sub = trainer.get("layer"), str(trainer.get("submodule_name") or "")
    if layer is None:
        return None, None
    kind = "mlp_out" if "mlp" in sub else "attn_out" if "attn" in sub else "resid_pre" if "resid_pre" in sub else None
    # dictionary_learning hooks a block's output (utils.get_submodule: model.layers[layer]) unless named otherwise
    return f"blocks.{int(layer)}.hook_{kind or 'resid_post'}", int(layer)


def load_dictionary_learning(path: Path, device="cpu") -> tuple:
    config = read_json(path / CONFIG)
    trainer = config.get("trainer") or {}
    obj = read_state(path / STATE)
    norm_factor, step = None, None
    if isinstance(obj.get("ae"), dict):  # a backup written during training, biases not yet rescaled
        state, norm_factor, step = obj["ae"], obj.get("norm_factor"), obj.get("step")
    else:
        state = obj
    cls = trainer.get("dict_class") or _guess_class(state, path)
    k = None
    if cls in ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE"):
        enc = as_f32(require(state, "encoder.weight", path))
        dec = as_f32(require(state, "decoder.weight", path)).T.contiguous()  # nn.Linear(F, D) weight is (D, F)
        b_enc = as_f32(require(state, "encoder.bias", path))
        if cls == "AutoEncoder":
            w, kind = Weights(enc, b_enc, dec, as_f32(require(state, "bias", path))), "relu"
        elif cls == "AutoEncoderNew":
            w, kind = Weights(enc, b_enc, dec, as_f32(require(state, "decoder.bias", path))), "relu"
            w.fold_input_bias()
        else:
            w = Weights(enc, b_enc, dec, as_f32(require(state, "b_dec", path)))
            k = int(state["k"]) if "k" in state else int(require(trainer, "k", path / CONFIG))
            kind = "topk" if cls == "AutoEncoderTopK" else "jumprelu"
            if kind == "jumprelu":
                w.threshold = _global_threshold(state, w.d_sae, path)
    elif cls in ("MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"):
        w = Weights(
            as_f32(require(state, "W_enc", path)).T.contiguous(),  # (D, F) parameter
            as_f32(require(state, "b_enc", path)),
            as_f32(require(state, "W_dec", path)),
            as_f32(require(state, "b_dec", path)),
        )
        kind = "jumprelu"
        if cls == "JumpReluAutoEncoder":
            w.threshold = as_f32(require(state, "threshold", path))
            w.fold_input_bias()  # apply_b_dec_to_input is False unless loaded from SAELens (not saved)
        else:
            w.threshold = _global_threshold(state, w.d_sae, path)
    elif cls == "GatedAutoEncoder":
        raise unsupported(path, "dictionary_learning's GatedAutoEncoder")
    else:
        raise unsupported(path, f"dictionary_learning dict_class {cls!r}")
    w.check(path, trainer.get("activation_dim"), trainer.get("dict_size"))
    if k is not None and not 1 <= k <= w.d_sae:
        raise UsageError(f"{path}: k={k} must be in [1, dict_size={w.d_sae}]")
    sae = build_sae(kind, w, device, **({"k": k} if kind == "topk" else {}))
    hook, _ = _hook(trainer)
    normalization = {"kind": "scalar", "scale": 1.0 / float(norm_factor)} if norm_factor else {"kind": "none"}
    notes = [] if hook else [f"{path}/{CONFIG} names no layer: the hook is unknown"]
    return sae, foreign_config(
        "dictionary_learning",
        path,
        sae,
        hook=hook,
        normalization=normalization,
        seed=trainer.get("seed"),
        step=int(step) if step is not None else None,
        source_config=config,
        notes=notes,
    )


def _global_threshold(state: dict, d_sae: int, path: Path) -> torch.Tensor:
    theta = float(require(state, "threshold", path))
    if theta < 0:
        raise UsageError(f"{path} has no inference threshold yet (threshold = {theta}: trained too few steps)")
    return torch.full((d_sae,), theta)


def _guess_class(state: dict, path: Path) -> str:
    """The dictionary class from the state dict's keys, for configs that do not name it."""
    keys = set(state)
    if {"W_enc", "group_sizes"} <= keys:
        return "MatryoshkaBatchTopKSAE"
    if {"W_enc", "threshold"} <= keys:
        return "JumpReluAutoEncoder"
    if {"bias", "encoder.weight"} <= keys:
        return "AutoEncoder"
    if {"decoder.bias", "encoder.weight"} <= keys:
        return "AutoEncoderNew"
    if "gate_bias" in keys:
        return "GatedAutoEncoder"
    raise CheckpointError(
        f"{path}/{CONFIG} names no trainer.dict_class and the keys of {STATE} ({', '.join(sorted(keys)[:6])}) do "
        f"not say which dictionary it is (TopK and BatchTopK share theirs); add dict_class to the config"
    )
