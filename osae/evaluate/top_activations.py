"""Top-activating tokens of a range of latents, examples across their activation range, and a histogram,
with the surrounding context rebuilt from the store.

Two streamed passes over the same rows of one split: the first counts firings, keeps per latent the `top`
largest activations and their rows, a uniform sample of SAMPLE firings (the smallest hashed priorities of
(row, latent), so the sample does not depend on the batching) and a histogram of log2 activations; the
second re-reads only the blocks holding the chosen rows and encodes each example's neighbours (same
sequence, `before` tokens earlier and `after` later), so every context token carries its own activation of
the latent. The sample gives the examples of each activation quantile band (QUANTILE_BANDS). Memory: one
block of rows plus (latents x (top + SAMPLE + HIST_BINS)).
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


SAMPLE = 48  # firings sampled per latent for the quantile bands
QUANTILE_BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 0.95))
HIST_LO, HIST_BINS = -24, 64  # log2 activation bins of width 1/2 from 2^-12 up to 2^20 (clamped at both ends)


@dataclass
class LatentSummary:
    index: int
    fired: int
    scanned: int
    max_value: float
    examples: list[Example]
    bands: list[tuple[str, list[Example]]] = field(default_factory=list)
    """(label, examples) per quantile band of the latent's positive activations, lowest first."""
    histogram: list[int] = field(default_factory=list)
    """Firings per half-octave bin: bin i holds activations in [2^((HIST_LO + i) / 2), 2^((HIST_LO + i + 1) / 2))."""

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
    per_band: int = 2,
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
    samp_pri = torch.full((SAMPLE, n_lat), float("inf"))
    samp_vals = torch.zeros(SAMPLE, n_lat)
    samp_rows = torch.full((SAMPLE, n_lat), -1, dtype=torch.long)
    hist = torch.zeros(n_lat * HIST_BINS, dtype=torch.long)
    cols = torch.arange(lo, hi)
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
        on = z > 0
        pri = torch.where(on, _priority(row_ids, cols), torch.inf)
        samp_pri, pick = torch.topk(torch.cat([samp_pri, pri]), SAMPLE, dim=0, largest=False, sorted=True)
        samp_vals = torch.cat([samp_vals, z]).gather(0, pick)
        samp_rows = torch.cat([samp_rows, row_ids]).gather(0, pick)
        bins = (torch.log2(z[on]) * 2).floor().long().clamp(HIST_LO, HIST_LO + HIST_BINS - 1) - HIST_LO
        latent_of = torch.arange(n_lat).expand_as(z)[on]
        hist += torch.bincount(latent_of * HIST_BINS + bins, minlength=n_lat * HIST_BINS)
        scanned += len(b)
        if progress is not None:
            progress(len(b))
    if scanned == 0:
        raise UsageError(f"{store.loc.display} has no rows in its {split} split; inspect needs some")
    # Every example to show: (latent column, key) -> (row, value); key ("top", rank) or (band, j).
    picks: dict[tuple[int, tuple], tuple[int, float]] = {}
    for col in range(n_lat):
        for rank in range(top):
            if best_vals[rank, col] > 0:
                picks[(col, ("top", rank))] = (int(best_rows[rank, col]), float(best_vals[rank, col]))
        for band, chosen in enumerate(_band_samples(samp_vals[:, col], samp_pri[:, col], per_band)):
            for j, i in enumerate(chosen):
                picks[(col, (band, j))] = (int(samp_rows[i, col]), float(samp_vals[i, col]))
    wanted: dict[int, list[tuple[int, tuple]]] = {}  # row -> [(latent column, key)]
    for (col, key), (row, _) in picks.items():
        wanted.setdefault(row, []).append((col, key))
    examples: dict[tuple[int, tuple], Example] = {}
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
            for col, key in wanted[r]:
                by_pos = dict(zip(pos[same].tolist(), z[:, col].tolist()))
                first = max(int(pos[i]) - before, min(window))
                last = min(int(pos[i]) + after, max(window))
                positions = [p for p in range(first, last + 1) if p in window]
                examples[(col, key)] = Example(
                    row=r,
                    value=picks[(col, key)][1],
                    tokens=[window[p] for p in positions],
                    activations=[by_pos.get(p) for p in positions],
                    focus=positions.index(int(pos[i])),
                )
    out = []
    hist = hist.view(n_lat, HIST_BINS)
    for col in range(n_lat):
        ex = [examples[(col, ("top", rank))] for rank in range(top) if (col, ("top", rank)) in examples]
        bands = []
        for band, (q_lo, q_hi) in enumerate(QUANTILE_BANDS):
            shown = [examples[(col, (band, j))] for j in range(per_band) if (col, (band, j)) in examples]
            if shown:
                bands.append((f"quantiles {q_lo:.2f}-{q_hi:.2f} of its activations", shown))
        summary = LatentSummary(lo + col, int(fired[col]), scanned, float(best_vals[0, col].clamp_min(0)), ex)
        summary.bands, summary.histogram = bands, hist[col].tolist()
        out.append(summary)
    return out


def _priority(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """A hash of (row, latent) in [0, 1): the sample keeps the smallest, whatever the batching."""
    h = rows * 0x9E3779B1 + cols * 0x85EBCA77  # int64 arithmetic wraps, which a hash may
    h = (h ^ (h >> 15)) * 0x2C1B3C6D
    h = h ^ (h >> 13)
    return (h & 0xFFFFFF).float() / float(1 << 24)


def _band_samples(values: torch.Tensor, priorities: torch.Tensor, per_band: int) -> list[list[int]]:
    """Per quantile band, the sample slots (at most `per_band`, in sample order) whose value lies in it.
    Quantiles are those of the sampled firings (a uniform sample of all of them)."""
    live = torch.nonzero(torch.isfinite(priorities)).flatten()
    if len(live) == 0:
        return [[] for _ in QUANTILE_BANDS]
    order = live[torch.argsort(values[live], stable=True)]  # ascending values
    n = len(order)
    out = []
    for q_lo, q_hi in QUANTILE_BANDS:
        slots = sorted(order[int(q_lo * n) : max(int(q_lo * n) + 1, int(q_hi * n))].tolist())
        out.append(slots[:per_band])
    return out


def _context_windows(ctx, seq_ids: list[int]) -> dict[int, dict[int, int]]:
    """sequence number -> {position: token id} from the store's full sequence windows (BOS included), read
    in one selection; empty when the store keeps no windows (then the stored rows alone give the tokens)."""
    if ctx is None or not seq_ids:
        return {}
    seq_ids = [s for s in seq_ids if 0 <= s < ctx.shape[0]]
    rows = ctx.oindex[np.asarray(seq_ids, dtype=np.int64), :] if seq_ids else []
    return {s: {p: int(t) for p, t in enumerate(w) if t >= 0} for s, w in zip(seq_ids, rows)}
