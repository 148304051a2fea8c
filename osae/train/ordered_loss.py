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


def ordered_loss_sparse(r_BD: torch.Tensor, vals_BN: torch.Tensor, idx_BN: torch.Tensor, W_dec_FD: torch.Tensor,
                        pi_F: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per-token expected loss (B,) for padded sparse codes (zero values are padding).

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


def ordered_loss_dense(r_BD: torch.Tensor, z_BF: torch.Tensor, W_dec_FD: torch.Tensor, pi_F: torch.Tensor) -> torch.Tensor:
    """Per-token expected loss (B,) for dense codes, through M = (D D^T) o min(pi_i, pi_j) (F x F)."""
    pi = pi_F.to(r_BD.dtype)
    M = (W_dec_FD @ W_dec_FD.T) * torch.minimum(pi[:, None], pi[None, :])
    c = r_BD @ W_dec_FD.T
    return (r_BD * r_BD).sum(1) - 2 * (z_BF * c * pi).sum(1) + ((z_BF @ M) * z_BF).sum(1)


def ordered_loss_bruteforce(r_BD: torch.Tensor, z_BF: torch.Tensor, W_dec_FD: torch.Tensor, pi_F: torch.Tensor) -> torch.Tensor:
    """The definition, summed over every prefix length L = 0..K (test oracle only)."""
    K = z_BF.shape[1]
    pi = torch.cat([torch.ones(1, dtype=pi_F.dtype), pi_F.to(torch.float64), torch.zeros(1, dtype=pi_F.dtype)])
    total = torch.zeros(len(r_BD), dtype=r_BD.dtype)
    for L in range(K + 1):
        p_L = (pi[L] - pi[L + 1]).to(r_BD.dtype)  # P(L = l) = pi_l - pi_{l+1}, with pi_0 = 1
        e = r_BD - z_BF[:, :L] @ W_dec_FD[:L]
        total = total + p_L * (e * e).sum(1)
    return total
