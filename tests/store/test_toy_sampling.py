"""The toy's support sampler is successive weighted sampling without replacement (methods.md 5.1, check 7): the
frequency of every m-subset matches the exact probability, on the fast path and on the Gumbel fallback."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

from osae.synthetic.sampling import SEED_BLOCK_ROWS, decode, iter_codes, sample_supports, seed_block_codes, zipf_prior


def exact_subset_probabilities(prior: np.ndarray, m: int) -> dict[tuple[int, ...], float]:
    """P(support = S) for successive draws without replacement, renormalizing after each: summed over orders."""
    probs: dict[tuple[int, ...], float] = {}
    for seq in permutations(range(len(prior)), m):
        p, left = 1.0, 1.0
        for j in seq:
            p *= prior[j] / left
            left -= prior[j]
        key = tuple(sorted(seq))
        probs[key] = probs.get(key, 0.0) + p
    return probs


def subset_frequencies(supports: np.ndarray) -> dict[tuple[int, ...], float]:
    keys, counts = np.unique(supports, axis=0, return_counts=True)
    return {tuple(int(v) for v in k): c / len(supports) for k, c in zip(keys, counts)}


# None: the rejection path (a row almost never needs the fallback); 0: every row by Gumbel-top; 2: a mixture.
@pytest.mark.parametrize("max_rounds", [None, 0, 2])
def test_subset_frequencies_match_sampling_without_replacement(max_rounds):
    prior = zipf_prior(6, 1.2)
    n = 60_000
    supports = sample_supports(np.random.default_rng(7), n, prior, 3, max_rounds=max_rounds)
    exact = exact_subset_probabilities(prior, 3)
    seen = subset_frequencies(supports)
    assert set(seen) <= set(exact)
    for subset, p in exact.items():
        # 5 binomial standard deviations; the rarest subset has p ~ 0.006.
        assert abs(seen.get(subset, 0.0) - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-4, (subset, p, seen.get(subset))


def test_paper_toy_inclusion_rates_are_flatter_than_the_prior():
    # methods.md 5.1: about 0.83, 0.56, 0.39, 0.29, 0.23 for the five most frequent atoms (K=100, m=5, Zipf 1.2).
    supports = sample_supports(np.random.default_rng(0), 100_000, zipf_prior(100, 1.2), 5)
    rates = np.bincount(supports.ravel(), minlength=100) / len(supports)
    np.testing.assert_allclose(rates[:5], [0.83, 0.56, 0.39, 0.29, 0.23], atol=0.015)
    assert rates[-1] < 0.012


def test_supports_are_distinct_sorted_and_complete_even_when_m_equals_k():
    prior = zipf_prior(40, 2.0)  # atom 40 has prior 4e-4: the fast path alone would need thousands of rounds
    supports = sample_supports(np.random.default_rng(1), 500, prior, 40)
    assert supports.dtype == np.int32
    assert (supports == np.arange(40)).all()
    supports = sample_supports(np.random.default_rng(1), 2000, prior, 9)
    assert (np.diff(supports, axis=1) > 0).all() and supports.min() >= 0 and supports.max() < 40


def test_seed_blocks_are_reproducible_and_a_short_stream_is_a_prefix():
    prior = zipf_prior(50, 1.2)
    a = seed_block_codes(3, 1, prior, 4)
    b = seed_block_codes(3, 1, prior, 4)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (seed_block_codes(3, 2, prior, 4)[0] == a[0]).all()
    long = [np.concatenate(p) for p in zip(*iter_codes(3, 2 * SEED_BLOCK_ROWS + 5, prior, 4))]
    short = [np.concatenate(p) for p in zip(*iter_codes(3, SEED_BLOCK_ROWS + 100, prior, 4))]
    assert len(long[0]) == 2 * SEED_BLOCK_ROWS + 5 and len(short[0]) == SEED_BLOCK_ROWS + 100
    assert all((s == lg[: len(s)]).all() for s, lg in zip(short, long))
    assert (long[1] > 0).all() and long[1].dtype == np.float32


def test_decode_equals_the_dense_product():
    rng = np.random.default_rng(0)
    dictionary = rng.standard_normal((30, 8)).astype(np.float32)
    indices, values = seed_block_codes(0, 0, zipf_prior(30, 1.0), 4)
    dense = np.zeros((len(indices), 30), np.float32)
    np.put_along_axis(dense, indices.astype(np.intp), values, axis=1)
    np.testing.assert_allclose(decode(indices, values, dictionary), dense @ dictionary, rtol=1e-5, atol=1e-5)
