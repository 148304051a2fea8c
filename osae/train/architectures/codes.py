"""How a batch's code is held: `SparseCode` (the active latents of each token) or `DenseCode` (all
activations), behind one interface, `Code`, so that no caller asks which one it has.

Shapes: B = batch, F = d_sae, D = d_in. Sparse codes decode with `F.embedding_bag` over the active decoder
rows, so a (B, F) dense code is never multiplied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


class Code(Protocol):
    """The code of a batch of B tokens, whatever its layout: `SparseCode` (TopK, BatchTopK, OSAE, ...) or
    `DenseCode` (ReLU, HybridOrder). Callers use only these methods, so no caller asks which one it has.
    A latent is active on a token when its value is > 0. Per-latent results are (F,) with F = d_sae."""

    def __len__(self) -> int:
        """B, the number of tokens."""
        ...

    def dense(self, d_sae: int) -> torch.Tensor:
        """The (B, F) activations."""
        ...

    def columns(self, lo: int, hi: int) -> torch.Tensor:
        """(B, hi - lo) activations of latents lo..hi-1, without building the whole dense code."""
        ...

    def l0(self) -> torch.Tensor:
        """Active latents per token (B,), long."""
        ...

    def l1(self) -> torch.Tensor:
        """Sum of |z| per token (B,)."""
        ...

    def fired(self, d_sae: int) -> torch.Tensor:
        """Bool (F,): latents active on at least one token."""
        ...

    def fire_counts(self, d_sae: int) -> torch.Tensor:
        """Long (F,): tokens each latent is active on."""
        ...

    def sum_sq(self, d_sae: int) -> torch.Tensor:
        """Float64 (F,): sum over tokens of z_j^2 (float64 so that long evaluations do not lose digits)."""
        ...

    def truncated(self, upto: int) -> Code:
        """The same code with only latents of index < upto kept (a prefix of the dictionary)."""
        ...

    def decode_with(self, W_FD: torch.Tensor) -> torch.Tensor:
        """(B, D): sum_j z_j W_FD[j] per token (the decoder without its bias)."""
        ...


def offsets_of(counts: torch.Tensor) -> torch.Tensor:
    """Where each token's entries start in a flat layout, from the entries per token."""
    return torch.cumsum(counts, 0) - counts


def entry_rows(idx: torch.Tensor, offsets: torch.Tensor | None, n_tokens: int) -> torch.Tensor:
    """Token index of every entry, in the layout of `idx`: (B, N) padded (no offsets) or (nnz,) flat."""
    if offsets is None:
        return torch.arange(idx.shape[0], device=idx.device)[:, None].expand_as(idx)
    counts = torch.diff(offsets, append=offsets.new_tensor([len(idx)]))
    return torch.repeat_interleave(torch.arange(n_tokens, device=idx.device), counts)


@dataclass
class SparseCode:
    """Active latents per token: `idx`, `vals` of shape (B, N) (zeros are padding), or flat (nnz,) with
    `offsets` (B,) marking where each token's entries start (variable counts, as BatchTopK gives).
    Implements `Code`."""

    idx: torch.Tensor
    vals: torch.Tensor
    offsets: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.idx.shape[0]) if self.offsets is None else len(self.offsets)

    def dense(self, d_sae: int) -> torch.Tensor:
        if self.offsets is None:
            return torch.zeros(self.idx.shape[0], d_sae, dtype=self.vals.dtype, device=self.vals.device).scatter_(
                1, self.idx, self.vals
            )
        rows = self.rows()
        out = torch.zeros(len(self.offsets), d_sae, dtype=self.vals.dtype, device=self.vals.device)
        out[rows, self.idx] = self.vals
        return out

    def rows(self) -> torch.Tensor:
        """Token index of every entry, in the layout of `idx` ((B, N) padded or (nnz,) flat)."""
        return entry_rows(self.idx, self.offsets, len(self))

    def columns(self, lo: int, hi: int) -> torch.Tensor:
        out = torch.zeros(len(self), hi - lo, dtype=self.vals.dtype, device=self.vals.device)
        keep = (self.idx >= lo) & (self.idx < hi)
        out[self.rows()[keep], self.idx[keep] - lo] = self.vals[keep]
        return out

    def _per_token(self, v: torch.Tensor) -> torch.Tensor:
        """Sum of the entry values `v` (laid out as `idx`) over each token's entries."""
        if self.offsets is None:
            return v.sum(1)
        return torch.zeros(len(self), dtype=v.dtype, device=v.device).index_add_(0, self.rows(), v)

    def l0(self) -> torch.Tensor:
        return self._per_token((self.vals > 0).long())

    def l1(self) -> torch.Tensor:
        return self._per_token(self.vals.abs())

    def fired(self, d_sae: int) -> torch.Tensor:
        mask = torch.zeros(d_sae, dtype=torch.bool, device=self.idx.device)
        mask[self.idx[self.vals > 0]] = True
        return mask

    def fire_counts(self, d_sae: int) -> torch.Tensor:
        return torch.bincount(self.idx[self.vals > 0], minlength=d_sae)

    def sum_sq(self, d_sae: int) -> torch.Tensor:
        sq = self.vals.detach().double().reshape(-1) ** 2  # padding slots hold 0 and add nothing
        return torch.zeros(d_sae, dtype=torch.float64, device=self.vals.device).index_add_(0, self.idx.reshape(-1), sq)

    def truncated(self, upto: int) -> SparseCode:
        return SparseCode(self.idx, self.vals * (self.idx < upto), self.offsets)

    def decode_with(self, W_FD: torch.Tensor) -> torch.Tensor:
        # embedding_bag gathers only the active rows of W: the (B, F) code is never built
        if self.offsets is None:
            return F.embedding_bag(self.idx, W_FD, per_sample_weights=self.vals, mode="sum")
        return F.embedding_bag(self.idx, W_FD, self.offsets, per_sample_weights=self.vals, mode="sum")

    def decode_nested(self, W_FD: torch.Tensor, widths: list[int]) -> list[torch.Tensor]:
        """(B, D) decodes without bias of the prefixes `widths` (increasing), in one pass over the entries:
        each entry is decoded once, in the band of latents it falls in, and the bands are summed up."""
        n_tokens = len(self)
        idx, vals, rows = self.idx.reshape(-1), self.vals.reshape(-1), self.rows().reshape(-1)  # rows ascending
        band = torch.bucketize(idx, torch.tensor(widths, device=idx.device), right=True)
        out, total = [], None
        for b in range(len(widths)):
            keep = band == b
            counts = torch.bincount(rows[keep], minlength=n_tokens)
            part = F.embedding_bag(idx[keep], W_FD, offsets_of(counts), per_sample_weights=vals[keep], mode="sum")
            total = part if total is None else total + part
            out.append(total)
        return out


@dataclass
class DenseCode:
    """A (B, F') code held as its dense activations `z` (ReLU-style SAEs, where most entries may be
    non-zero). F' < d_sae after `truncated`: the missing latents are zero. Implements `Code`."""

    z: torch.Tensor

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def _pad(self, v_F: torch.Tensor, d_sae: int) -> torch.Tensor:
        """A per-latent (F',) result widened to (d_sae,) with zeros for the truncated latents."""
        if len(v_F) >= d_sae:
            return v_F[:d_sae]
        return torch.cat([v_F, v_F.new_zeros(d_sae - len(v_F))])

    def dense(self, d_sae: int) -> torch.Tensor:
        if self.z.shape[1] >= d_sae:
            return self.z[:, :d_sae]
        return torch.cat([self.z, self.z.new_zeros(len(self.z), d_sae - self.z.shape[1])], 1)

    def columns(self, lo: int, hi: int) -> torch.Tensor:
        return self.dense(hi)[:, lo:hi]

    def l0(self) -> torch.Tensor:
        return (self.z > 0).sum(1)

    def l1(self) -> torch.Tensor:
        return self.z.abs().sum(1)

    def fired(self, d_sae: int) -> torch.Tensor:
        return self._pad((self.z > 0).any(0), d_sae)

    def fire_counts(self, d_sae: int) -> torch.Tensor:
        return self._pad((self.z > 0).sum(0), d_sae)

    def sum_sq(self, d_sae: int) -> torch.Tensor:
        return self._pad((self.z.detach().double() ** 2).sum(0), d_sae)

    def truncated(self, upto: int) -> DenseCode:
        return DenseCode(self.z[:, :upto])  # narrower, so decoding multiplies only the kept columns

    def decode_with(self, W_FD: torch.Tensor) -> torch.Tensor:
        return self.z @ W_FD[: self.z.shape[1]]
