"""SparseCode and DenseCode are one interface: the same values give the same answers whichever holds them."""

import pytest
import torch

from osae.train.architectures import ARCHITECTURES, build
from osae.train.architectures.codes import DenseCode, SparseCode
from osae.train.architectures.selection import batch_topk_code, topk_code

D, K, B = 6, 20, 9


def _pre(seed: int) -> torch.Tensor:
    return torch.randn(B, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _sparse_codes():
    """A padded code with some zero (padding) slots, and a flat code whose first, a middle and last tokens
    have no entry at all."""
    padded = topk_code(_pre(0), 5)  # clamp_min(0) leaves zeros where fewer than 5 pre-activations are > 0
    pre = _pre(1)
    pre[[0, 4, B - 1]] = -pre[[0, 4, B - 1]].abs()  # never among the batch's largest
    flat = batch_topk_code(pre, 3)
    assert (padded.vals == 0).any() and flat.l0()[[0, 4, B - 1]].eq(0).all()
    return {"padded": padded, "flat": flat}


@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_a_sparse_code_and_the_dense_code_of_its_values_agree_everywhere(layout):
    sparse = _sparse_codes()[layout]
    z = sparse.dense(K)
    dense = DenseCode(z)
    assert len(sparse) == len(dense) == B
    torch.testing.assert_close(dense.dense(K), z)
    assert torch.equal(sparse.l0(), dense.l0()) and torch.equal(sparse.l0(), (z > 0).sum(1))
    torch.testing.assert_close(sparse.l1(), dense.l1())
    torch.testing.assert_close(sparse.l1(), z.abs().sum(1))
    assert torch.equal(sparse.fired(K), dense.fired(K)) and torch.equal(sparse.fired(K), (z > 0).any(0))
    assert torch.equal(sparse.fire_counts(K), dense.fire_counts(K))
    assert torch.equal(sparse.fire_counts(K), (z > 0).sum(0))
    torch.testing.assert_close(sparse.sum_sq(K), dense.sum_sq(K))
    torch.testing.assert_close(sparse.sum_sq(K), (z**2).sum(0))
    assert sparse.sum_sq(K).dtype == dense.sum_sq(K).dtype == torch.float64
    for lo, hi in ((0, K), (3, 11), (19, 20)):
        torch.testing.assert_close(sparse.columns(lo, hi), z[:, lo:hi])
        torch.testing.assert_close(dense.columns(lo, hi), z[:, lo:hi])
    W = torch.randn(K, D, dtype=torch.float64)
    torch.testing.assert_close(sparse.decode_with(W), z @ W)
    torch.testing.assert_close(dense.decode_with(W), z @ W)


@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_truncated_codes_keep_only_the_prefix_and_still_report_every_latent(layout):
    sparse = _sparse_codes()[layout]
    z = sparse.dense(K)
    kept = z.clone()
    kept[:, 7:] = 0
    for code in (sparse.truncated(7), DenseCode(z).truncated(7)):
        torch.testing.assert_close(code.dense(K), kept)
        assert code.fired(K).shape == code.fire_counts(K).shape == code.sum_sq(K).shape == (K,)
        assert torch.equal(code.fire_counts(K), (kept > 0).sum(0))
        torch.testing.assert_close(code.sum_sq(K), (kept**2).sum(0))
        torch.testing.assert_close(code.columns(5, 12), kept[:, 5:12])
        assert torch.equal(code.l0(), (kept > 0).sum(1))


@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_the_sae_decodes_both_codes_alike_with_and_without_a_prefix(layout):
    torch.manual_seed(0)
    sae = build("topk", d_in=D, d_sae=K, k=3).double()
    sparse = _sparse_codes()[layout]
    dense = DenseCode(sparse.dense(K))
    z = sparse.dense(K)
    for upto in (None, 1, 8, K):
        zz = z if upto is None else z * (torch.arange(K) < upto)
        expected = zz @ sae.W_dec + sae.b_dec
        torch.testing.assert_close(sae.decode(sparse, upto=upto), expected)
        torch.testing.assert_close(sae.decode(dense, upto=upto), expected)
    torch.testing.assert_close(sae.decode(dense, bias=False), z @ sae.W_dec)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_returns_a_code_object_that_decodes_as_its_dense_values(arch):
    torch.manual_seed(1)
    sae = build(arch, d_in=D, d_sae=K, k=3).double().eval()
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for code in (sae.encode(x), sae(x).code):
        assert len(code) == B and code.l0().shape == (B,) and code.fired(K).shape == (K,)
        assert code.fired(K).dtype == torch.bool
        torch.testing.assert_close(sae.decode(code), sae.decode(DenseCode(code.dense(K))))
    if arch in ("relu", "hybridorder"):
        assert isinstance(sae.encode(x), DenseCode) and isinstance(sae(x).code, DenseCode)
    else:
        assert isinstance(sae.encode(x), SparseCode)


def test_dense_codes_keep_their_gradient():
    sae = build("relu", d_in=D, d_sae=K, k=1)
    out = sae(torch.randn(B, D))
    assert out.code.dense(K).requires_grad
    out.loss.backward()
    assert sae.W_enc.grad is not None


@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_nested_decodes_equal_the_decodes_of_each_truncated_prefix(layout):
    sparse = _sparse_codes()[layout]
    W = torch.randn(K, D, dtype=torch.float64)
    widths = [1, 4, 7, 15, K]  # the first band may be empty on some tokens
    for w, got in zip(widths, sparse.decode_nested(W, widths)):
        torch.testing.assert_close(got, sparse.truncated(w).decode_with(W))
