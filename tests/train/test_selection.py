"""The sparse backward of chosen pre-activations gives autograd's dense gradients, and the fast selections
choose exactly what torch.topk chooses."""

import pytest
import torch

from osae.train.architectures import ARCHITECTURES, base, build
from osae.train.architectures.base import StepContext
from osae.train.architectures.selection import (
    PreActs,
    _largest_positions,
    batch_topk_code,
    topk_among,
    topk_code,
)

B, D, K = 24, 10, 64


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    W = torch.randn(K, D, generator=g, dtype=torch.float64).requires_grad_()
    b = (0.1 * torch.randn(K, generator=g, dtype=torch.float64)).requires_grad_()
    b_dec = (0.1 * torch.randn(D, generator=g, dtype=torch.float64)).requires_grad_()
    return x, W, b, b_dec


def _grads(select, sparse: bool):
    """Gradients of a loss of the chosen values' decode, through PreActs (sparse) or a plain graph (dense)."""
    x, W, b, b_dec = _inputs()
    pre = PreActs.of(x, W, b, b_dec) if sparse else torch.nn.functional.linear(x - b_dec, W, b)
    code = select(pre)
    target = torch.randn(B, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    loss = ((code.decode_with(W.detach() * 0.5) - target) ** 2).sum() + code.vals.pow(3).sum()
    loss.backward()
    return loss.detach(), W.grad, b.grad, b_dec.grad


SELECTIONS = {
    "topk": lambda pre: topk_code(pre, 5),
    "topk-nearly-dense": lambda pre: topk_code(pre, 40),  # over the dense-backward share: autograd's path
    "batch-topk": lambda pre: batch_topk_code(pre, 5),
    "topk-among-few": lambda pre: topk_among(pre, 3, torch.arange(K) % 7 == 0),
    "topk-among-many": lambda pre: topk_among(pre, 3, torch.arange(K) % 7 != 0),
}


@pytest.mark.parametrize("name", SELECTIONS)
def test_chosen_values_have_the_dense_gradients(name):
    dense, sparse = _grads(SELECTIONS[name], False), _grads(SELECTIONS[name], True)
    for a, c in zip(dense, sparse):
        torch.testing.assert_close(c, a)
    assert sparse[1].abs().sum() > 0 and sparse[3].abs().sum() > 0


def test_largest_positions_match_topk_including_a_misleading_sample():
    g = torch.Generator().manual_seed(1)
    flat = torch.randn(300_000, generator=g)
    want = set(torch.topk(flat, 5000).indices.tolist())
    assert set(_largest_positions(flat, 5000).tolist()) == want
    # The sampled positions (every stride-th) hold the largest values: the estimated threshold is too high
    # and too few candidates pass it, so the exact fallback must answer.
    stride = max(1, len(flat) // (1 << 16)) | 1
    flat[::stride] += 100.0
    want = set(torch.topk(flat, 50_000).indices.tolist())
    assert set(_largest_positions(flat, 50_000).tolist()) == want


@pytest.mark.parametrize("n_dead", [3, 12, 40])  # fewer dead than k_aux, a few more, many more
def test_auxk_over_the_dead_columns_equals_its_sparse_decode(monkeypatch, n_dead):
    """AuxK's two paths (dense products over the dead columns; a sparse top-k_aux decode) agree."""
    torch.manual_seed(0)
    sae = build("topk", d_in=D, d_sae=K, k=4, aux_k=5).double()
    x = torch.randn(B, D, dtype=torch.float64)
    dead = torch.zeros(K, dtype=torch.bool)
    dead[torch.randperm(K)[:n_dead]] = True
    results = []
    for factor in (0, K):  # 0: always the sparse decode; K: always the dense products
        monkeypatch.setattr(base, "AUXK_DENSE_FACTOR", factor)
        sae.zero_grad()
        out = sae(x, StepContext(dead_F=dead))
        out.losses["auxk"].backward()
        results.append((out.losses["auxk"].detach(), [p.grad.clone() for p in sae.parameters()]))
    (loss_s, grads_s), (loss_d, grads_d) = results
    assert loss_s > 0
    torch.testing.assert_close(loss_s, loss_d)
    for gs, gd in zip(grads_s, grads_d):
        torch.testing.assert_close(gs, gd)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka", "matryoshka-random", "osae"])
def test_every_sparse_architecture_trains_with_the_dense_losses_and_gradients(arch):
    """The same SAE with its pre-activations given as a plain graph (autograd's dense backward)."""
    torch.manual_seed(0)
    settings = {"k_init": 48, "k_warmup_steps": 4} if arch == "osae" else {}
    sae = build(arch, d_in=D, d_sae=K, k=4, aux_k=3, n_steps=10, **settings).double()
    x = torch.randn(B, D, dtype=torch.float64)
    dead = torch.arange(K) % 3 == 0
    results = []
    for dense in (False, True):
        if dense:
            sae.train_pre_acts = sae.pre_acts  # the plain graph: topk and friends accept a tensor too
        sae.zero_grad()
        for step in (0, 6):  # osae: in its k warm-up (nearly dense codes), then at k
            out = sae(x, StepContext(step=step, dead_F=dead))
            assert out.losses["auxk"] > 0
            out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in sae.parameters()]))
    (loss_s, grads_s), (loss_d, grads_d) = results
    torch.testing.assert_close(loss_s, loss_d)
    for gs, gd in zip(grads_s, grads_d):
        torch.testing.assert_close(gs, gd)
    assert ARCHITECTURES[arch]


def test_pre_activations_under_cpu_autocast_are_autocasts_own_and_reuse_one_block():
    """The bf16 training pre-activations go into a reused block, and equal autocast's F.linear bit for bit."""
    x, W, b, b_dec = (t.detach().float().requires_grad_(t.requires_grad) for t in _inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.nn.functional.linear(x - b_dec, W, b)
        first = PreActs.of(x, W, b, b_dec).dense
        first_ptr = first.data_ptr()
        second = PreActs.of(x + 1, W, b, b_dec).dense
    assert first.dtype == second.dtype == torch.bfloat16
    assert second.data_ptr() == first_ptr  # written over, not allocated again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(PreActs.of(x, W, b, b_dec).dense, want)
