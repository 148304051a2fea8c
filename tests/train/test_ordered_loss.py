import numpy as np
import pytest
import torch

from osae.train.ordered_loss import (
    gram_chunk,
    ordered_loss_bruteforce,
    ordered_loss_dense,
    ordered_loss_gram,
    ordered_loss_segment,
    ordered_loss_sparse,
)
from osae.train.prefix import boundaries_to_pi, inclusion_weights


def _case(seed, B=6, K=24, d=10, n=5, p0=0.1, unit=False):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K, d, generator=g, dtype=torch.float64)
    if unit:
        W = W / W.norm(dim=1, keepdim=True)
    r = torch.randn(B, d, generator=g, dtype=torch.float64)
    idx = torch.stack([torch.randperm(K, generator=g)[:n] for _ in range(B)])
    vals = torch.rand(B, n, generator=g, dtype=torch.float64)
    vals[0, -1] = 0.0  # a padded slot
    z = torch.zeros(B, K, dtype=torch.float64).scatter(1, idx, vals)
    pmf = torch.rand(K, generator=g, dtype=torch.float64)
    pi = torch.flip(torch.cumsum(torch.flip(pmf / pmf.sum(), [0]), 0), [0]) * (1 - p0)
    return r, z, idx, vals, W, pi


@pytest.mark.parametrize("seed", range(5))
def test_exact_forms_equal_the_average_over_all_prefixes(seed):
    r, z, idx, vals, W, pi = _case(seed)
    brute = ordered_loss_bruteforce(r, z, W, pi)
    torch.testing.assert_close(ordered_loss_sparse(r, vals, idx, W, pi, chunk=4), brute, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ordered_loss_gram(r, vals, idx, W, pi, chunk=4), brute, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ordered_loss_segment(r, vals, idx, W, pi, chunk=4), brute, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ordered_loss_dense(r, z, W, pi), brute, rtol=1e-12, atol=1e-12)


def test_gradients_match_the_brute_force_and_the_closed_forms():
    r, z, idx, vals, W, pi = _case(7, unit=True)
    W1, v1, r1 = W.clone().requires_grad_(), vals.clone().requires_grad_(), r.clone().requires_grad_()
    ordered_loss_sparse(r1, v1, idx, W1, pi).sum().backward()
    W2, z2, r2 = W.clone().requires_grad_(), z.clone().requires_grad_(), r.clone().requires_grad_()
    ordered_loss_bruteforce(r2, z2, W2, pi).sum().backward()
    torch.testing.assert_close(W1.grad, W2.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(r1.grad, r2.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(v1.grad, z2.grad.gather(1, idx), rtol=1e-10, atol=1e-10)
    # Closed forms (methods.md 3.5): eps_j = pi_j r - sum_i a_i min(pi_i, pi_j) d_i; dL/da_j = -2 <d_j, eps_j>.
    b = 1
    A, a = idx[b], vals[b]
    p = pi[A]
    eps = p[:, None] * r[b][None, :] - (torch.minimum(p[:, None], p[None, :]) @ (a[:, None] * W[A]))
    torch.testing.assert_close(v1.grad[b], -2 * (W[A] * eps).sum(1), rtol=1e-10, atol=1e-10)
    # d/db_dec = -2 E_L[e_L]; r = x - b_dec, so d/dr = +2 E_L[e_L].
    torch.testing.assert_close(r1.grad[b], 2 * (r[b] - (p * a) @ W[A]), rtol=1e-10, atol=1e-10)


def test_all_ones_is_the_topk_loss():
    r, z, idx, vals, W, _ = _case(3)
    ones = torch.ones(W.shape[0], dtype=torch.float64)
    torch.testing.assert_close(ordered_loss_sparse(r, vals, idx, W, ones), ((r - z @ W) ** 2).sum(1))


def test_matryoshka_levels_are_the_kernel_with_a_step_law():
    r, z, idx, vals, W, _ = _case(4, K=16)
    widths = np.array([2, 4, 8, 16])
    explicit = sum(((r - z[:, :w] @ W[:w]) ** 2).sum(1) for w in widths) / len(widths)
    torch.testing.assert_close(ordered_loss_sparse(r, vals, idx, W, boundaries_to_pi(widths, 16)), explicit)


@pytest.mark.parametrize("law", ["uniform", "geometric", "zipf", "piecewise", "matryoshka-marginal"])
def test_inclusion_weights_are_a_valid_tail(law):
    pi = inclusion_weights(law, 64, rho=0.95, groups=4)
    assert pi[0] <= 1 + 1e-12 and pi[-1] > 0 and bool((pi[1:] <= pi[:-1] + 1e-12).all())
    if law == "uniform":
        torch.testing.assert_close(pi, torch.arange(64, 0, -1, dtype=torch.float64) / 64)


def test_the_hand_written_backward_passes_gradcheck_and_equals_the_gram_form():
    r, z, idx, vals, W, pi = _case(11, B=5, K=12, d=4, n=4)
    inputs = (r.clone().requires_grad_(), vals.clone().requires_grad_(), idx, W.clone().requires_grad_(), pi)
    for fn in (ordered_loss_sparse, ordered_loss_segment):
        assert torch.autograd.gradcheck(
            lambda r_, v_, W_, fn=fn: fn(r_, v_, idx, W_, pi, chunk=2), (inputs[0], inputs[1], inputs[3])
        )
    g = torch.randn(5, dtype=torch.float64)
    grads = []
    for fn in (ordered_loss_sparse, ordered_loss_gram, ordered_loss_segment):
        rr, vv, WW = r.clone().requires_grad_(), vals.clone().requires_grad_(), W.clone().requires_grad_()
        (fn(rr, vv, idx, WW, pi, chunk=3) * g).sum().backward()
        grads.append((rr.grad, vv.grad, WW.grad))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_the_default_chunking_covers_a_ragged_last_chunk():
    # B = 150 is two full chunks of gram_chunk(5) = 64 tokens and a ragged third: the chunked loss and its
    # gradients must equal one unchunked reference over the whole batch
    r, z, idx, vals, W, pi = _case(3, B=150, K=40, d=6, n=5)
    grads = []
    for fn, kw in ((ordered_loss_sparse, {}), (ordered_loss_gram, {"chunk": 150})):
        rr, vv, WW = r.clone().requires_grad_(), vals.clone().requires_grad_(), W.clone().requires_grad_()
        fn(rr, vv, idx, WW, pi, **kw).mean().backward()
        grads.append((rr.grad, vv.grad, WW.grad))
    assert gram_chunk(5) < 150 // 2
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
