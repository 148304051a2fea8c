"""Top-activating tokens of a range of latents, with the surrounding context rebuilt from the store.

Two streamed passes over the same rows of one split: the first counts firings and keeps, per latent, the
`top` largest activations and their rows; the second re-reads only the blocks holding those rows and
encodes each example's neighbours (same sequence, `before` tokens earlier and `after` later), so every
context token carries its own activation of the latent. Memory: one block of rows plus (latents x top).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from osae.errors import UsageError
from osae.evaluate.batches import iter_codes
from osae.store import ActivationStore, Normalizer, to_float32
from osae.train.architectures import SAE


@dataclass
class Example:
    row: int
    value: float
    tokens: list[int] = field(default_factory=list)
    activations: list[float | None] = field(default_factory=list)  # None: the token has no stored row (BOS)
    focus: int = 0  # index of the activating token within `tokens`


@dataclass
class LatentSummary:
    index: int
    fired: int
    scanned: int
    max_value: float
    examples: list[Example]

    @property
    def rate(self) -> float:
        return self.fired / max(self.scanned, 1)


@torch.no_grad()
def top_activations(
    sae: SAE,
    normalizer: Normalizer,
    store: ActivationStore,
    hook: str,
    *,
    latents: range,
    max_tokens: int = 200_000,
    top: int = 10,
    before: int = 12,
    after: int = 4,
    split: str = "eval",
    batch: int = 2048,
    progress=None,
) -> list[LatentSummary]:
    if not store.has_tokens:
        raise UsageError(
            f"{store.loc.display} holds no token ids (imported activations?); inspect needs the tokens to show contexts"
        )
    lo, hi = latents.start, latents.stop
    device = next(sae.parameters()).device
    n_lat = hi - lo
    fired = torch.zeros(n_lat, dtype=torch.long)
    best_vals = torch.full((top, n_lat), -1.0)
    best_rows = torch.full((top, n_lat), -1, dtype=torch.long)
    scanned = 0
    blocks: dict[int, int] = {}  # rows read, block_start -> end: the second pass re-reads whole blocks
    for b in iter_codes(sae, normalizer, store, hook, split, max_tokens=max_tokens, batch=batch):
        blocks[b.rows.block_start] = b.rows.stop
        z = b.code.columns(lo, hi).float().cpu()
        fired += (z > 0).sum(0)
        vals = torch.cat([best_vals, z])
        row_ids = torch.arange(b.rows.start, b.rows.stop)[:, None].expand(-1, n_lat)
        rows_all = torch.cat([best_rows, row_ids])
        # A stable sort, not topk: among equal activations the earlier row wins, whatever the batching.
        best_vals, pick = torch.sort(vals, dim=0, descending=True, stable=True)
        best_vals, pick = best_vals[:top], pick[:top]
        best_rows = rows_all.gather(0, pick)
        scanned += len(b)
        if progress is not None:
            progress(len(b))
    if scanned == 0:
        raise UsageError(f"{store.loc.display} has no rows in its {split} split; inspect needs some")
    wanted: dict[int, list[tuple[int, int]]] = {}  # row -> [(latent column, rank)]
    for col in range(n_lat):
        for rank in range(top):
            if best_vals[rank, col] > 0:
                wanted.setdefault(int(best_rows[rank, col]), []).append((col, rank))
    examples: dict[tuple[int, int], Example] = {}
    ctx = store.array("sequences/context") if "sequences/context" in store.group else None
    starts = store.sequence_starts()
    for b_lo, b_hi in blocks.items():
        rows_here = sorted(r for r in wanted if b_lo <= r < b_hi)
        if not rows_here:
            continue
        seq = store.sequence_of_rows(np.arange(b_lo, b_hi), starts)
        pos = store.read_rows("position", b_lo, b_hi)
        tok = store.read_rows("tokens", b_lo, b_hi)
        acts = store.read_rows(f"acts/{hook}", b_lo, b_hi)
        windows = _context_windows(ctx, sorted({int(seq[r - b_lo]) for r in rows_here}))
        for r in rows_here:
            i = r - b_lo
            # Neighbours of the same sequence within this block (sequences are stored in position order).
            a, b = max(0, i - before), min(len(seq), i + after + 1)
            same = np.nonzero(seq[a:b] == seq[i])[0] + a
            x = torch.from_numpy(to_float32(acts[same], store.dtype(hook))).to(device)
            z = sae.encode(normalizer.forward(x)).columns(lo, hi).float().cpu()
            # The stored rows always hold the focus token; the full window adds BOS and the rest.
            window = {int(p): int(t) for p, t in zip(pos[same], tok[same])} | windows.get(int(seq[i]), {})
            for col, rank in wanted[r]:
                by_pos = dict(zip(pos[same].tolist(), z[:, col].tolist()))
                first = max(int(pos[i]) - before, min(window))
                last = min(int(pos[i]) + after, max(window))
                positions = [p for p in range(first, last + 1) if p in window]
                examples[(col, rank)] = Example(
                    row=r,
                    value=float(best_vals[rank, col]),
                    tokens=[window[p] for p in positions],
                    activations=[by_pos.get(p) for p in positions],
                    focus=positions.index(int(pos[i])),
                )
    out = []
    for col in range(n_lat):
        ex = [examples[(col, rank)] for rank in range(top) if (col, rank) in examples]
        out.append(LatentSummary(lo + col, int(fired[col]), scanned, float(best_vals[0, col].clamp_min(0)), ex))
    return out


def _context_windows(ctx, seq_ids: list[int]) -> dict[int, dict[int, int]]:
    """sequence number -> {position: token id} from the store's full sequence windows (BOS included), read
    in one selection; empty when the store keeps no windows (then the stored rows alone give the tokens)."""
    if ctx is None or not seq_ids:
        return {}
    seq_ids = [s for s in seq_ids if 0 <= s < ctx.shape[0]]
    rows = ctx.oindex[np.asarray(seq_ids, dtype=np.int64), :] if seq_ids else []
    return {s: {p: int(t) for p, t in enumerate(w) if t >= 0} for s, w in zip(seq_ids, rows)}
