import pytest
import torch

from osae.train.optimizers import LazyAdam, latent_state_keys, make_optimizer


def _pair(shape, seed=0):
    torch.manual_seed(seed)
    a = torch.nn.Parameter(torch.randn(*shape, dtype=torch.float64))
    return a, torch.nn.Parameter(a.detach().clone())


def test_lazy_adam_is_adam_while_every_row_has_a_gradient():
    ref, lazy = _pair((6, 4))
    opt_ref = torch.optim.Adam([ref], lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    opt_lazy = make_optimizer("adam-lazy", [lazy], 1e-2, (0.9, 0.99), 1e-8)
    assert isinstance(opt_lazy, LazyAdam)
    for _ in range(25):
        g = torch.randn(6, 4, dtype=torch.float64)
        ref.grad, lazy.grad = g.clone(), g.clone()
        opt_ref.step()
        opt_lazy.step()
    torch.testing.assert_close(lazy, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 3), (5,)])
def test_a_row_without_gradient_stays_put_and_counts_only_its_own_updates(shape):
    """Row 2 gets gradients at steps 0, 3 and 7 only: between them its values and moments do not move, and
    its trajectory is torch's Adam run on those three gradients alone (its own bias correction)."""
    _, lazy = _pair(shape)
    opt = LazyAdam([lazy], lr=1e-2)
    alone = torch.nn.Parameter(lazy.detach()[2].clone())
    opt_alone = torch.optim.Adam([alone], lr=1e-2)
    for step in range(9):
        g = torch.randn(*shape, dtype=torch.float64)
        if step not in (0, 3, 7):
            g[2] = 0
        before = {k: v[2].clone() for k, v in opt.state[lazy].items()} if opt.state else None
        row_before = lazy.detach()[2].clone()
        lazy.grad = g
        opt.step()
        if step in (0, 3, 7):
            alone.grad = g[2].clone()
            opt_alone.step()
        else:
            assert torch.equal(lazy.detach()[2], row_before)
            for key, val in before.items():
                assert torch.equal(opt.state[lazy][key][2], val), key
        torch.testing.assert_close(lazy.detach()[2], alone.detach(), rtol=1e-12, atol=1e-12)
    assert opt.state[lazy]["row_steps"].tolist() == [9, 9, 3, 9, 9]
    assert set(latent_state_keys(opt)) == {"exp_avg", "exp_avg_sq", "row_steps"}
