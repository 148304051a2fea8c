"""Real stores on disk for the tests: random activations with token ids, written through StoreWriter."""

from __future__ import annotations

import numpy as np

from osae.store import StoreWriter, hook_spec

HOOK = "blocks.3.hook_resid_post"


def random_rows(rng: np.random.Generator, n: int, d: int, dtype: str) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32) * 3 + 1
    if dtype == "bfloat16":
        return (x.view(np.uint32) >> 16).astype(np.uint16)
    return x.astype(dtype)


def write_sequences(
    writer: StoreWriter, rng, n_seqs: int, ctx: int, d: int, dtype: str, first_seq: int = 0, hooks=(HOOK,)
) -> dict:
    """Append n_seqs packed sequences of ctx tokens (BOS excluded: ctx - 1 rows each). Returns what was written."""
    rows = ctx - 1
    out = {h: [] for h in hooks}
    toks, sids, poss = [], [], []
    for s in range(first_seq, first_seq + n_seqs):
        window = rng.integers(0, 1000, size=ctx).astype(np.int32)
        window[0] = 0
        writer.add_sequences(np.array([writer.n_rows]), window[None])
        acts = {h: random_rows(rng, rows, d, dtype) for h in hooks}
        writer.write(
            acts, tokens=window[1:], seq_id=np.full(rows, s, np.int64), position=np.arange(1, ctx, dtype=np.int32)
        )
        for h in hooks:
            out[h].append(acts[h])
        toks.append(window[1:]), sids.append(np.full(rows, s)), poss.append(np.arange(1, ctx))
    return {
        "acts": {h: np.concatenate(v) for h, v in out.items()},
        "tokens": np.concatenate(toks),
        "seq_id": np.concatenate(sids),
        "position": np.concatenate(poss),
    }


def make_store(
    path,
    *,
    n_seqs=200,
    ctx=16,
    d=32,
    dtype="float16",
    chunk_rows=256,
    seed=0,
    hooks=(HOOK,),
    eval_fraction=0.1,
    compressor="none",
) -> dict:
    rng = np.random.default_rng(seed)
    w = StoreWriter.create(
        path,
        hooks={h: hook_spec(3, d, dtype, "resid_post") for h in hooks},
        has_tokens=True,
        context_size=ctx,
        chunk_rows=chunk_rows,
        compressor=compressor,
        split={"rule": "hash-chunks", "eval_fraction": eval_fraction, "seed": 0},
        provenance={"model": "test", "dataset": {"id": "random"}},
    )
    data = write_sequences(w, rng, n_seqs, ctx, d, dtype, hooks=hooks)
    w.close()
    return data
