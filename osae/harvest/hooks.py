"""Hook points of a transformers causal LM, captured with forward hooks, and a forward pass that stops
right after the deepest requested block (later blocks are never computed).

Names follow TransformerLens/SAELens: `blocks.{L}.hook_resid_post` is the residual stream after block L
(= `hidden_states[L + 1]` of transformers, for all but the last block, where transformers applies the final
norm); `resid_pre` is the input of block L; `attn_out` and `mlp_out` are what the attention and MLP add to
the residual stream (for Gemma-2, after its post-attention and post-feed-forward norms).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from osae.errors import UsageError

HOOKS = ("resid_post", "resid_pre", "attn_out", "mlp_out")

# model_type -> (path of the block list, attention contribution module, MLP contribution module)
ARCHITECTURES = {
    "gpt_neox": ("gpt_neox.layers", "attention", "mlp"),
    "gpt2": ("transformer.h", "attn", "mlp"),
    "llama": ("model.layers", "self_attn", "mlp"),
    "mistral": ("model.layers", "self_attn", "mlp"),
    "qwen2": ("model.layers", "self_attn", "mlp"),
    "qwen3": ("model.layers", "self_attn", "mlp"),
    "gemma": ("model.layers", "self_attn", "mlp"),
    "gemma2": ("model.layers", "post_attention_layernorm", "post_feedforward_layernorm"),
    "olmo": ("model.layers", "self_attn", "mlp"),
    "phi3": ("model.layers", "self_attn", "mlp"),
}


def hook_name(hook: str, layer: int) -> str:
    return f"blocks.{layer}.hook_{hook}"


@dataclass(frozen=True)
class HookPoint:
    hook: str
    layer: int

    @property
    def name(self) -> str:
        return hook_name(self.hook, self.layer)


def _get(module: torch.nn.Module, path: str) -> torch.nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def find_blocks(model: torch.nn.Module) -> tuple[torch.nn.ModuleList, str, str | None, str | None]:
    """(blocks, path, attention module name, MLP module name) for known and, where possible, other models."""
    mtype = getattr(model.config, "model_type", "")
    if mtype in ARCHITECTURES:
        path, attn, mlp = ARCHITECTURES[mtype]
        return _get(model, path), path, attn, mlp
    n = None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        n = n or getattr(model.config, key, None)
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if not candidates:
        raise UsageError(
            f"cannot locate the block list of {type(model).__name__} (model_type '{mtype}'); "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    path, blocks = candidates[0]
    children = [name for name, _ in blocks[0].named_children()]
    attn = next((c for c in children if "attn" in c or "attention" in c), None)
    mlp = next((c for c in children if "mlp" in c or "feed_forward" in c), None)
    return blocks, path, attn, mlp


class _StopForward(Exception):
    """Raised by the last needed hook: the rest of the model is not computed."""


def _first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@contextmanager
def capture(model: torch.nn.Module, points: list[HookPoint]):
    """Context yielding a dict that each forward fills with {hook name: (B, T, d) tensor}."""
    blocks, _, attn_name, mlp_name = find_blocks(model)
    n = len(blocks)
    for p in points:
        if p.hook not in HOOKS:
            raise UsageError(f"unknown hook '{p.hook}'; choose from {', '.join(HOOKS)}")
        if not 0 <= p.layer < n:
            raise UsageError(f"layer {p.layer} is out of range: this model has layers 0..{n - 1}")
        if p.hook == "attn_out" and attn_name is None or p.hook == "mlp_out" and mlp_name is None:
            raise UsageError(f"cannot find the {p.hook} module in {type(model).__name__}")
    out: dict[str, torch.Tensor] = {}
    wanted = {p.name for p in points}
    # The forward stops at the end of the deepest block needed (or at its start if only resid_pre there).
    last = max(points, key=lambda p: (p.layer, p.hook != "resid_pre"))
    stop_pre = last.hook == "resid_pre" and all(p.layer < last.layer or p.hook == "resid_pre" for p in points)

    def done():
        if wanted.issubset(out):
            raise _StopForward

    handles = []
    for p in points:
        block = blocks[p.layer]
        if p.hook == "resid_post":

            def post(mod, args, output, name=p.name):
                out[name] = _first_tensor(output)

            handles.append(block.register_forward_hook(post))
        elif p.hook == "resid_pre":

            def pre(mod, args, kwargs, name=p.name):
                out[name] = args[0] if args else kwargs["hidden_states"]

            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            sub = getattr(block, attn_name if p.hook == "attn_out" else mlp_name)

            def sub_hook(mod, args, output, name=p.name):
                out[name] = _first_tensor(output)

            handles.append(sub.register_forward_hook(sub_hook))
    if stop_pre:
        handles.append(blocks[last.layer].register_forward_pre_hook(lambda m, a, k: done(), with_kwargs=True))
    else:
        handles.append(blocks[last.layer].register_forward_hook(lambda m, a, o: done()))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def run_to_hooks(model: torch.nn.Module, input_ids: torch.Tensor, store: dict, attention_mask=None) -> dict:
    """One truncated forward pass; returns the captured activations."""
    store.clear()
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    return dict(store)
