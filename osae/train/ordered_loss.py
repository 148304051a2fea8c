"""The exact expected nested-dropout loss of methods.md section 3, for top-m codes.

For one token with residual r = x - b_dec, active latents A with values a_j, and inclusion weights
pi_j = P(L >= j), the expected squared error of the prefix-truncated reconstruction is

    E_L ||r - sum_{j in A, j <= L} a_j d_j||^2
        = ||r||^2 - 2 sum_{j in A} pi_j a_j <r, d_j> + sum_{i,j in A} a_i a_j <d_i, d_j> min(pi_i, pi_j)

because atoms i and j are both kept exactly when L >= max(i, j). No sorting, no sampling: O(n^2 d) per token
on top of a TopK SAE (the gather-Gram path), or O(K^2 d) once per step for dense codes (the dense-M path).
All pi_j = 1 gives the plain TopK loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ordered_loss_sparse(
    r_BD: torch.Tensor,
    vals_BN: torch.Tensor,
    idx_BN: torch.Tensor,
    W_dec_FD: torch.Tensor,
    pi_F: torch.Tensor,
    chunk: int | None = None,
) -> torch.Tensor:
    """Per-token expected loss (B,) for padded sparse codes (zero values are padding), with hand-written
    gradients (`_GramLoss`). `ordered_loss_gram` (autograd through the same algebra) and `ordered_loss_segment`
    (partial sums in index order) are the references the tests compare it with. `chunk` tokens share one
    batched product (None: `gram_chunk`)."""
    chunk = chunk or gram_chunk(idx_BN.shape[1])
    W, vals = W_dec_FD.to(r_BD.dtype), vals_BN.to(r_BD.dtype)  # autocast's codes may be bf16: the loss is not
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (r_BD, vals, W))
    return _GramLoss.apply(r_BD, vals, idx_BN, W, pi_F.to(r_BD.dtype), chunk, wants_grad)


def gram_chunk(n: int) -> int:
    """Tokens per batched product for n active latents. Forward and backward on 2 CPU threads, B = 4096
    (session 18, fastest of 16-256): n = 32 at d = 256 took 47 ms in chunks of 64 against 58 ms in chunks of
    256 (K = 4096; 56 against 70 ms at K = 16384), while d = 512 was flat over 16-256; n = 64 was fastest in
    chunks of 128. Small chunks keep each chunk's gathered atoms in cache for the product and the sums."""
    return 64 if n <= 32 else 128


class _GramLoss(torch.autograd.Function):
    """The Gram form as one quadratic form per token (methods.md 3.3, 3.5). The residual joins the active
    atoms as one more row, with value -1 and inclusion weight 1: A = [D_A; r] ((n+1) x d), a = [a_A; -1],
    p = [pi_A; 1], P_uv = min(p_u, p_v). With Y = (P diag(a)) A, one batched product per chunk:

        L = sum_u a_u <A_u, Y_u>,   dL/da_u = 2 <A_u, Y_u>,   dL/dA_u = 2 a_u Y_u.

    Rows u < n of dL/dA go into W_dec's gradient and row n is dL/dr, so both land in one index_add_ into the
    gradient of the stacked table [W_dec; r]. The loss is always averaged, so the upstream gradient is one
    constant: the forward accumulates that table gradient while a chunk's atoms are still in cache, and the
    backward only scales it (an upstream gradient that varies per token recomputes it with those weights).
    Measured on 2 CPU threads at d=256, K=4096, B=4096, n=32, forward and backward: 0.09 s, against 0.22 s
    for the earlier form (separate c = D_A r, eps = pi r - E D_A and a second gather in the backward).
    The same algebra as two running sums in index order (Y = revcumsum(w o cumsum(a o A)), O(n d) per token
    instead of O(n^2 d)) was no faster here: 43-61 ms against 43-45 ms, its 2n small adds per chunk cost
    what the product saves (session 18)."""

    @staticmethod
    @torch.autocast("cpu", enabled=False)  # the loss cancels (|r|^2 - 2 ... + ...): it stays in the inputs' dtype
    @torch.autocast("cuda", enabled=False)
    def forward(ctx, r, vals, idx, W, pi, chunk, wants_grad):
        B, n = idx.shape
        table = torch.cat([W, r])  # token b's residual is row K + b
        rows = torch.cat([idx, torch.arange(len(W), len(W) + B, device=idx.device)[:, None]], 1)
        a = torch.cat([vals, vals.new_full((B, 1), -1.0)], 1)
        p = torch.cat([pi[idx], pi.new_ones(B, 1)], 1)
        Ha = torch.empty(B, n + 1, dtype=r.dtype, device=r.device)  # <A_u, Y_u> = ((A A^T o P) a)_u
        g_table = _GramLoss._table_grad(table, rows, a, p, chunk, Ha=Ha, accumulate=wants_grad)
        ctx.save_for_backward(g_table, Ha, table, rows, a, p)
        ctx.chunk, ctx.K = chunk, len(W)
        return (a * Ha).sum(1)

    @staticmethod
    def _table_grad(table, rows, a, p, chunk, Ha=None, weight=None, accumulate=True):
        """Sum over tokens of weight_b * 2 a_u Y_u into the table's rows; fills Ha on the way."""
        g_table = torch.zeros_like(table) if accumulate else None
        for s in range(0, len(rows), chunk):
            sl = slice(s, s + chunk)
            A = F.embedding(rows[sl], table)  # embedding's gather: measured 3-6x faster than index_select here
            # P_uv a_v per chunk: the whole batch's (B, n+1, n+1) block took longer to fill than the products
            Pa = torch.minimum(p[sl, :, None], p[sl, None, :]).mul_(a[sl, None, :])
            Y = torch.bmm(Pa, A)
            if Ha is not None:
                # A is this chunk's own gather and is not read again: multiply into it, then sum. The loss
                # forward and backward took 46-51 ms against 56-59 ms for einsum("bnd,bnd->bn") (session
                # 17); linalg.vecdot, which allocates the product, took 4x einsum's time
                torch.sum(A.mul_(Y), 2, out=Ha[sl])
            if accumulate:
                scale = 2 * a[sl] if weight is None else 2 * a[sl] * weight[sl, None]
                g_table.index_add_(0, rows[sl].reshape(-1), Y.mul_(scale[:, :, None]).flatten(0, 1))
        return g_table

    @staticmethod
    def backward(ctx, grad_out):
        g_table, Ha, table, rows, a, p = ctx.saved_tensors
        if len(grad_out) and bool((grad_out == grad_out[0]).all()):
            g_table = g_table * grad_out[0]
        else:
            g_table = _GramLoss._table_grad(table, rows, a, p, ctx.chunk, weight=grad_out)
        g_vals = 2 * grad_out[:, None] * Ha[:, :-1]
        return g_table[ctx.K :], g_vals, None, g_table[: ctx.K], None, None, None


def ordered_loss_segment(r_BD, vals_BN, idx_BN, W_dec_FD, pi_F, chunk: int = 256) -> torch.Tensor:
    """The segment form (methods.md 3.2) with its own backward: a second exact implementation."""
    return _SegmentLoss.apply(r_BD, vals_BN, idx_BN, W_dec_FD, pi_F.to(r_BD.dtype), chunk)


class _SegmentLoss(torch.autograd.Function):
    """Sort each token's active latents by index (so pi is non-increasing along them), form the partial
    sums S_t = sum_{s<=t} a_s d_s, and use E_L||e_L||^2 = ||r||^2 + sum_t w_t (||S_t||^2 - 2<r, S_t>) with
    w_t = pi_t - pi_{t+1} (pi_{n+1} = 0), the probability that L stops between the t-th and (t+1)-th active
    latent. Gradients: dL/dS_t = 2 w_t (S_t - r); each latent's term gathers the reverse cumulative sum
    Gamma_t = sum_{u>=t} dL/dS_u, so dL/da_t = <Gamma_t, d_t> and dL/dd_t = a_t Gamma_t (added into W_dec's
    rows with index_add_), and dL/dr = 2 r - 2 sum_t w_t S_t. Chunks of the batch bound the memory."""

    @staticmethod
    def _sorted(vals, idx, pi):
        idx_s, order = torch.sort(idx, dim=1)
        a = vals.gather(1, order)
        p = pi[idx_s]
        w = p - torch.cat([p[:, 1:], torch.zeros_like(p[:, :1])], dim=1)
        return idx_s, a, w, order

    @staticmethod
    def forward(ctx, r, vals, idx, W, pi, chunk):
        out = torch.empty(len(r), dtype=r.dtype, device=r.device)
        for s in range(0, len(r), chunk):
            rr, (idx_s, a, w, _) = r[s : s + chunk], _SegmentLoss._sorted(vals[s : s + chunk], idx[s : s + chunk], pi)
            S = torch.cumsum(a[:, :, None] * W[idx_s], dim=1)  # (b, n, d)
            phi = (S * S).sum(2) - 2 * torch.einsum("bnd,bd->bn", S, rr)
            out[s : s + chunk] = (rr * rr).sum(1) + (w * phi).sum(1)
        ctx.save_for_backward(r, vals, idx, W, pi)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        r, vals, idx, W, pi = ctx.saved_tensors
        g_r = torch.empty_like(r) if ctx.needs_input_grad[0] else None
        g_vals = torch.empty_like(vals) if ctx.needs_input_grad[1] else None
        g_W = torch.zeros_like(W) if ctx.needs_input_grad[3] else None
        for s in range(0, len(r), ctx.chunk):
            sl = slice(s, s + ctx.chunk)
            rr, go = r[sl], grad_out[sl]
            idx_s, a, w, order = _SegmentLoss._sorted(vals[sl], idx[sl], pi)
            atoms = W[idx_s]
            S = torch.cumsum(a[:, :, None] * atoms, dim=1)
            gS = (2 * go[:, None, None] * w[:, :, None]) * (S - rr[:, None, :])
            gamma = torch.flip(torch.cumsum(torch.flip(gS, [1]), dim=1), [1])
            if g_r is not None:
                g_r[sl] = 2 * go[:, None] * (rr - torch.einsum("bn,bnd->bd", w, S))
            if g_vals is not None:
                g_sorted = (gamma * atoms).sum(2)
                g_vals[sl] = torch.empty_like(g_sorted).scatter_(1, order, g_sorted)
            if g_W is not None:
                g_W.index_add_(0, idx_s.reshape(-1), (a[:, :, None] * gamma).reshape(-1, W.shape[1]))
        return g_r, g_vals, None, g_W, None, None


def ordered_loss_gram(
    r_BD: torch.Tensor,
    vals_BN: torch.Tensor,
    idx_BN: torch.Tensor,
    W_dec_FD: torch.Tensor,
    pi_F: torch.Tensor,
    chunk: int = 1024,
) -> torch.Tensor:
    """The inclusion-weight (Gram) form with autograd: the reference implementation.

    B = batch, N = active slots per token, D = d_in, F = d_sae. The batch is processed in chunks so the
    gathered atoms (chunk x N x D) stay small.
    """
    out = []
    pi = pi_F.to(r_BD.dtype)
    for s in range(0, len(r_BD), chunk):
        r, a, idx = r_BD[s : s + chunk], vals_BN[s : s + chunk], idx_BN[s : s + chunk]
        atoms = W_dec_FD[idx]  # (b, n, d)
        c = torch.einsum("bnd,bd->bn", atoms, r)
        gram = torch.bmm(atoms, atoms.transpose(1, 2))
        p = pi[idx]
        pmin = torch.minimum(p[:, :, None], p[:, None, :])
        quad = torch.einsum("bi,bij,bj->b", a, gram * pmin, a)
        out.append((r * r).sum(1) - 2 * (p * a * c).sum(1) + quad)
    return torch.cat(out)


def ordered_loss_dense(
    r_BD: torch.Tensor, z_BF: torch.Tensor, W_dec_FD: torch.Tensor, pi_F: torch.Tensor
) -> torch.Tensor:
    """Per-token expected loss (B,) for dense codes, through M = (D D^T) o min(pi_i, pi_j) (F x F)."""
    pi = pi_F.to(r_BD.dtype)
    M = (W_dec_FD @ W_dec_FD.T) * torch.minimum(pi[:, None], pi[None, :])
    c = r_BD @ W_dec_FD.T
    return (r_BD * r_BD).sum(1) - 2 * (z_BF * c * pi).sum(1) + ((z_BF @ M) * z_BF).sum(1)


def ordered_loss_bruteforce(
    r_BD: torch.Tensor, z_BF: torch.Tensor, W_dec_FD: torch.Tensor, pi_F: torch.Tensor
) -> torch.Tensor:
    """The definition, summed over every prefix length L = 0..K (test oracle only)."""
    K = z_BF.shape[1]
    pi = torch.cat([torch.ones(1, dtype=pi_F.dtype), pi_F.to(torch.float64), torch.zeros(1, dtype=pi_F.dtype)])
    total = torch.zeros(len(r_BD), dtype=r_BD.dtype)
    for L in range(K + 1):
        p_L = (pi[L] - pi[L + 1]).to(r_BD.dtype)  # P(L = l) = pi_l - pi_{l+1}, with pi_0 = 1
        e = r_BD - z_BF[:, :L] @ W_dec_FD[:L]
        total = total + p_L * (e * e).sum(1)
    return total
