"""Choosing the active latents of a batch, with a backward that touches only the chosen entries.

A TopK-style SAE keeps k of F pre-activations per token. Autograd through `topk(W_enc x + b_enc)` stores
the dense (B, F) graph and, in the backward, scatters the k gradients of each token into a dense (B, F)
matrix and multiplies it twice (for W_enc and for x - b_dec): two dense B x F x D matmuls of which all but
k/F of the entries are zeros. Here the training forward computes the dense pre-activations once without a
graph (`PreActs`); the chosen entries' values then come from `PreActs.take`, whose backward is

    dW_enc[j] = sum over chosen (b, j) of g_bj (x_b - b_dec)     (one sparse (F x B) @ (B x D) product)
    db_enc[j] = sum over chosen (b, j) of g_bj
    d(x_b - b_dec) = sum over chosen (b, j) of g_bj W_enc[j]     (an embedding_bag, as the decoder uses)

so the backward costs O(B k D) instead of O(B F D). The selections give exactly the entries of
`torch.topk` (ties aside) and are also used on plain tensors (inference, which needs no backward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from osae.distributed import SINGLE, Collective
from osae.train.architectures.codes import SparseCode, entry_rows, offsets_of

# Above this share of chosen entries per token (an OSAE k warm-up from K), a dense backward is cheaper.
DENSE_BACKWARD_SHARE = 1 / 8
# BatchTopK: sample size of the threshold estimate, and the margin kept above the estimated count.
THRESHOLD_SAMPLE = 1 << 16
THRESHOLD_MARGIN = 1.25


class _ChosenPreActs(torch.autograd.Function):
    """Values of chosen entries of pre = xc W^T + b, given precomputed; backward over those entries only.

    `idx` (B, N) chosen latents per token, or flat (nnz,) grouped by token with `offsets` (B,)."""

    @staticmethod
    def forward(ctx, xc_BD, W_FD, b_F, idx, offsets, vals):
        ctx.save_for_backward(xc_BD, W_FD, idx, offsets)
        return vals.clone()

    @staticmethod
    def backward(ctx, g):
        xc, W, idx, offsets = ctx.saved_tensors
        g = g.to(xc.dtype).contiguous()
        flat_idx, flat_g = idx.reshape(-1), g.reshape(-1)
        d_xc = d_W = d_b = None
        if ctx.needs_input_grad[0]:
            if idx.dim() == 1:
                d_xc = F.embedding_bag(idx, W, offsets, per_sample_weights=g, mode="sum")
            else:
                d_xc = F.embedding_bag(idx, W, per_sample_weights=g, mode="sum")
        if ctx.needs_input_grad[1]:
            rows = entry_rows(idx, offsets if idx.dim() == 1 else None, len(xc)).reshape(-1)
            G = torch.sparse_coo_tensor(
                torch.stack([flat_idx, rows]), flat_g, (W.shape[0], len(xc)), check_invariants=False
            )
            d_W = torch.sparse.mm(G, xc)
        if ctx.needs_input_grad[2]:
            d_b = torch.zeros(W.shape[0], dtype=g.dtype, device=g.device).index_add_(0, flat_idx, flat_g)
        return d_xc, d_W, d_b, None, None, None


@dataclass
class PreActs:
    """A training batch's pre-activations: `dense` (B, F) computed without a graph (in the matmul's dtype,
    bfloat16 under autocast), and what `take` needs to give chosen entries a sparse backward."""

    dense: torch.Tensor
    xc: torch.Tensor  # x - b_dec, with its graph
    W: torch.Tensor
    b: torch.Tensor

    @classmethod
    def of(cls, x_BD: torch.Tensor, W_FD: torch.Tensor, b_F: torch.Tensor, b_dec_D: torch.Tensor) -> PreActs:
        xc = x_BD - b_dec_D
        with torch.no_grad():
            dtype = _matmul_dtype(xc, W_FD)
            block = _scratch_block((len(xc), W_FD.shape[0]), dtype, W_FD.device) if dtype is not None else None
            if block is None:
                dense = F.linear(xc, W_FD, b_F)
            else:
                # autocast's own F.linear, on inputs cast as autocast casts them, into the reused block
                with torch.autocast(W_FD.device.type, enabled=False):
                    dense = torch.addmm(b_F.to(dtype), xc.to(dtype), W_FD.to(dtype).t(), out=block)
        return cls(dense, xc, W_FD, b_F)

    def take(self, idx: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Float values of the entries `idx` ((B, N), or flat with `offsets`), differentiable sparsely."""
        if offsets is None and idx.shape[1] > DENSE_BACKWARD_SHARE * self.dense.shape[1]:
            # nearly dense codes: autograd's dense backward is cheaper (one more matmul, with a graph)
            return F.linear(self.xc, self.W, self.b).gather(1, idx).to(self.xc.dtype)
        vals = _gathered(self.dense, idx, offsets)
        empty = idx.new_zeros(0) if offsets is None else offsets
        return _ChosenPreActs.apply(self.xc, self.W, self.b, idx, empty, vals.to(self.xc.dtype))


# The training forward's dense (B, F) pre-activations go into one block per process that is written over
# each step: a fresh 64 MB result costs page faults worth ~30% of the encoder matmul on the CPU (and a fresh
# 32 MB bf16 one under autocast about as much; docs/benchmarks.md). Sharing it between SAEs is safe because a
# forward reads `PreActs.dense` only while it chooses its code (the chosen values are copied out; the sparse
# backward never reads it). One slot, so a sweep holds one block.
_SCRATCH: list[torch.Tensor] = []


def _matmul_dtype(xc_BD: torch.Tensor, W_FD: torch.Tensor) -> torch.dtype | None:
    """The dtype of xc W^T: autocast's on the CPU, else the inputs' own; None when they differ (or under
    CUDA autocast, whose caching allocator has no page faults to save)."""
    device = W_FD.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device) if device == "cpu" else None
    return W_FD.dtype if xc_BD.dtype == W_FD.dtype else None


def _scratch_block(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The reused (B, F) block of that shape, dtype and device."""
    if not _SCRATCH or _SCRATCH[0].shape != shape or _SCRATCH[0].dtype != dtype or _SCRATCH[0].device != device:
        _SCRATCH[:] = [torch.empty(shape, dtype=dtype, device=device)]
    return _SCRATCH[0]


def _dense(pre: torch.Tensor | PreActs) -> torch.Tensor:
    return pre.dense if isinstance(pre, PreActs) else pre


def _values(pre: torch.Tensor | PreActs, idx: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(pre, PreActs):
        return pre.take(idx, offsets)
    return _gathered(pre, idx, offsets)


def _gathered(dense: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """dense's entries `idx`: (B, N) padded, or flat with `offsets`."""
    if offsets is None:
        return dense.gather(1, idx)
    return dense[entry_rows(idx, offsets, len(dense)), idx]


def topk_code(pre: torch.Tensor | PreActs, k: int) -> SparseCode:
    """Per-token TopK of ReLU(pre)."""
    with torch.no_grad():
        idx = torch.topk(_dense(pre), k, dim=1, sorted=False).indices
    return SparseCode(idx, _values(pre, idx).clamp_min(0))


def topk_among(pre: torch.Tensor | PreActs, k: int, allowed_F: torch.Tensor) -> SparseCode:
    """Per-token TopK of ReLU(pre) among the latents `allowed_F` (bool, F) only (AuxK's dead latents)."""
    with torch.no_grad():
        dense = _dense(pre)
        columns = allowed_F.nonzero().squeeze(1)
        if len(columns) * 4 < allowed_F.numel():  # few: choose within the gathered columns
            idx = columns[torch.topk(dense[:, columns], k, dim=1, sorted=False).indices]
        else:
            idx = torch.topk(dense.masked_fill(~allowed_F, float("-inf")), k, dim=1, sorted=False).indices
    return SparseCode(idx, _values(pre, idx).clamp_min(0))


def _largest_positions(flat: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Positions of the n_keep largest entries of `flat`, in no order: the entries above a threshold
    estimated from a strided sample (with a margin), then an exact top-n_keep among those; a plain topk if
    the estimate kept too few."""
    n = flat.numel()
    if n_keep >= n:
        return torch.arange(n, device=flat.device)
    stride = max(1, n // THRESHOLD_SAMPLE) | 1  # odd: the sample does not sit on a few latents of a 2^n F
    sample = flat[::stride]
    m = min(len(sample), int(THRESHOLD_MARGIN * n_keep * len(sample) / n) + 64)
    if m < len(sample):
        theta = torch.topk(sample, m, sorted=False).values.min()
        candidates = (flat >= theta).nonzero().squeeze(1)
        if len(candidates) >= n_keep:
            return candidates[torch.topk(flat[candidates], n_keep, sorted=False).indices]
    return torch.topk(flat, n_keep, sorted=False).indices


def batch_topk_code(pre: torch.Tensor | PreActs, k: int, collective: Collective = SINGLE) -> SparseCode:
    """The k * B largest ReLU'd entries of the whole batch (B over every process), in flat form."""
    with torch.no_grad():
        dense = _dense(pre)
        B, Fd = dense.shape
        flat = dense.reshape(-1)
        n_keep = min(k * B * collective.world, flat.numel())  # over the whole batch
        pos = _largest_positions(flat, n_keep)
        if collective.world > 1:
            # The whole batch's n_keep-th largest value is among the union of every slice's n_keep largest.
            candidates = collective.cat(flat[pos].float())
            theta = torch.topk(candidates, min(n_keep, candidates.numel()), sorted=False).values.min()
            pos = pos[flat[pos] >= theta.to(flat.dtype)]
        pos = torch.sort(pos).values
        rows, idx = pos // Fd, pos % Fd
        counts = torch.bincount(rows, minlength=B)
        offsets = offsets_of(counts)
    return SparseCode(idx, _values(pre, idx, offsets).clamp_min(0), offsets)


def threshold_code(pre_BF: torch.Tensor, theta: float) -> SparseCode:
    """Every latent whose pre-activation exceeds theta (BatchTopK inference), in flat form."""
    mask = pre_BF > max(theta, 0.0)
    rows, idx = mask.nonzero(as_tuple=True)
    counts = mask.sum(1)
    offsets = offsets_of(counts)
    return SparseCode(idx, pre_BF[rows, idx], offsets)
