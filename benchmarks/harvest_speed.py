"""Harvest throughput against a bare forward pass (issue: osae harvest). Results go to docs/benchmarks.md.

Pythia-70M's architecture with random weights (its published config: hidden 512, 6 layers, 8 heads,
MLP 2048, rotary fraction 0.25, vocabulary 50304), layer 3 resid_post, context 128, the embedded model's
tokenizer on the python-stdlib text. Measured side by side in one run, alternating, on the same windows:
1. `osae harvest` end to end (load the model, tokenize, truncated forward, write the store with digests and
   statistics), and its marginal rate (a run of twice the tokens, minus one run: start-up excluded);
2. a bare forward pass truncated after block 3 (the same hooks, nothing stored);
3. the full untruncated forward pass (logits included).

    python benchmarks/harvest_speed.py --tokens 65024 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from osae.harvest import HarvestConfig, harvest
from osae.harvest.hooks import HookPoint, capture, run_to_hooks
from osae.harvest.models import EMBEDDED_DIR, load_model
from osae.harvest.sources import resolve_source
from osae.harvest.windows import iter_windows


def pythia70m_dir(root: Path) -> Path:
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    path = root / "pythia-70m-random"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        cfg = GPTNeoXConfig(
            vocab_size=50304,
            hidden_size=512,
            num_hidden_layers=6,
            num_attention_heads=8,
            intermediate_size=2048,
            rotary_pct=0.25,
            max_position_embeddings=2048,
            bos_token_id=0,
            eos_token_id=0,
            use_parallel_residual=True,
            tie_word_embeddings=False,
        )
        GPTNeoXForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
        AutoTokenizer.from_pretrained(EMBEDDED_DIR).save_pretrained(path)
    return path


def bare_forward(model_dir: Path, n_windows: int, batch: int, truncated: bool) -> float:
    lm = load_model(str(model_dir), device="cpu")
    src = resolve_source("python-stdlib")
    windows = []
    for w in iter_windows(lm.tokenizer, src.documents(), 128):
        windows.append(w)
        if len(windows) == n_windows:
            break
    data = torch.from_numpy(np.stack(windows)).long()
    t0 = time.perf_counter()
    with torch.no_grad():
        if truncated:
            with capture(lm.model, [HookPoint("resid_post", 3)]) as cache:
                for i in range(0, n_windows, batch):
                    run_to_hooks(lm.model, data[i : i + batch], cache)
        else:
            for i in range(0, n_windows, batch):
                lm.model(input_ids=data[i : i + batch], use_cache=False)
    return n_windows * 127 / (time.perf_counter() - t0)


def osae_harvest(model_dir: Path, out: Path, tokens: int, batch: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    harvest(
        HarvestConfig(
            out=str(out), model=str(model_dir), layers=[3], tokens=tokens, batch_size=batch, context_size=128
        ),
        progress=False,
    )
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=127 * 512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/osae-harvest-bench"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = pythia70m_dir(args.out)
    n_windows = -(-args.tokens // 127)
    res = {
        "tokens": n_windows * 127,
        "batch_windows": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "harvest": [],
        "harvest_marginal": [],
        "bare_truncated": [],
        "bare_full": [],
    }
    tokens = n_windows * 127
    for _ in range(args.rounds):
        one = osae_harvest(model_dir, args.out / "h.zarr", tokens, args.batch_size)
        two = osae_harvest(model_dir, args.out / "h.zarr", 2 * tokens, args.batch_size)
        res["harvest"].append(one)
        # The extra tokens of the double run over its extra time: harvest without its start-up (model load).
        res["harvest_marginal"].append(tokens / (2 * tokens / two - tokens / one))
        res["bare_truncated"].append(bare_forward(model_dir, n_windows, args.batch_size, truncated=True))
        res["bare_full"].append(bare_forward(model_dir, n_windows, args.batch_size, truncated=False))
    mean = {k: float(np.mean(res[k])) for k in ("harvest", "harvest_marginal", "bare_truncated", "bare_full")}
    res["mean_tokens_per_s"] = mean
    res["harvest_vs_truncated_forward"] = mean["harvest"] / mean["bare_truncated"]
    res["harvest_marginal_vs_truncated_forward"] = mean["harvest_marginal"] / mean["bare_truncated"]
    res["harvest_vs_full_forward"] = mean["harvest"] / mean["bare_full"]
    print(json.dumps(res, indent=2))
    (args.out / "harvest_speed.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
