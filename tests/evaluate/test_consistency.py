import numpy as np
import pytest
from scipy.stats import spearmanr

from osae.evaluate.consistency import match, prefix_curves, stab_ord


def _dict(K=40, d=16, seed=0):
    return np.random.default_rng(seed).standard_normal((K, d))


def test_a_permuted_rescaled_copy_has_stab_one_and_ord_of_the_permutation():
    D = _dict()
    perm = np.random.default_rng(1).permutation(40)
    copy = D[perm] * np.random.default_rng(2).uniform(0.5, 3, size=(40, 1))
    stab, ord_ = stab_ord(D, copy)
    assert stab == pytest.approx(1.0)
    # atom j of D sits at position inv[j] of the copy
    inv = np.argsort(perm)
    assert ord_ == pytest.approx(spearmanr(np.arange(40), inv).statistic)
    assert stab_ord(D, D) == pytest.approx((1.0, 1.0))
    assert stab_ord(D, D[::-1])[1] == pytest.approx(-1.0)


def test_signed_cosines_are_not_folded():
    D = _dict()
    stab, _ = stab_ord(D, -D)
    assert stab < 0.5  # a flipped atom is not a match


def test_unequal_sizes_match_the_smaller_count():
    D = _dict(40)
    m = match(D[:25], D)
    assert len(m.rows) == 25 and m.stab == pytest.approx(1.0) and m.ord == pytest.approx(1.0)


def test_prefix_curves_truncate_then_match():
    D = _dict(32)
    other = np.concatenate([D[:8], _dict(24, seed=5)])
    curves = prefix_curves(D, other)
    assert sorted(curves) == [4, 8, 16, 32]
    assert curves[4]["stab"] == pytest.approx(1.0) and curves[8]["ord"] == pytest.approx(1.0)
    assert curves[32]["stab"] < 1.0


def test_sparse_matching_agrees_with_the_exact_one():
    rng = np.random.default_rng(3)
    D = rng.standard_normal((600, 24))
    noisy = D[rng.permutation(600)] + 0.3 * rng.standard_normal((600, 24))
    exact = match(D, noisy)
    sparse = match(D, noisy, exact_limit=100)
    assert sparse.method.startswith("sparse")
    assert sparse.stab == pytest.approx(exact.stab, abs=1e-9) and sparse.ord == pytest.approx(exact.ord, abs=1e-9)


def test_code_correlation_matches_a_permuted_copy_and_treats_constant_latents_as_zero():
    import torch

    from osae.evaluate.consistency import CodeCorrelation

    rng = np.random.default_rng(0)
    z = torch.from_numpy(np.abs(rng.standard_normal((500, 12))) * (rng.random((500, 12)) < 0.3))
    z[:, 5] = 0  # a dead latent
    perm = rng.permutation(12)
    acc = CodeCorrelation(12, 12)
    for s in range(0, 500, 128):
        acc.add(z[s : s + 128], z[s : s + 128][:, perm])
    S = acc.correlation()
    assert S[5].max() == 0
    m = acc.match()
    alive = [i for i in range(12) if i != 5]
    assert np.allclose(m.cosines[alive], 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):  # numpy's corrcoef divides by the dead latent's zero std
        reference = np.nan_to_num(np.corrcoef(z.numpy().T, z.numpy()[:, perm].T)[:12, 12:])
    np.testing.assert_allclose(S, reference, atol=1e-9)
