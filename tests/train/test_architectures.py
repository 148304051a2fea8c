import pytest
import torch

from osae.train.architectures import ARCHITECTURES, build
from osae.train.architectures.base import StepContext
from osae.train.ordered_loss import ordered_loss_bruteforce

D, K, k, B = 12, 48, 4, 64


def _x(seed=0, n=B):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def _observe(sae, x, step):
    """One training forward and the statistics update the trainer would do for it (one process)."""
    out = sae(x, StepContext(step=step))
    sae.update_statistics({name: value for name, (_, value) in out.stats.items()}, step)
    return out


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_shapes_sparsity_and_forward_equals_decode_of_encode(arch):
    torch.manual_seed(0)
    sae = build(arch, d_in=D, d_sae=K, k=k)
    x = _x()
    out = sae(x, StepContext(step=0))
    assert out.recon.shape == (B, D) and torch.isfinite(out.loss)
    l0 = out.code.l0()
    if arch in ("topk", "osae"):
        assert int(l0.max()) <= k
    if arch in ("batchtopk", "matryoshka", "matryoshka-random"):
        assert int(l0.sum()) <= k * B and float(l0.float().mean()) == pytest.approx(k, abs=0.5)
    if arch in ("topk", "osae", "relu", "hybridorder"):
        torch.testing.assert_close(out.recon, sae.decode(sae.encode(x)))
    out.loss.backward()
    assert sae.W_enc.grad is not None and sae.W_dec.grad is not None


def test_topk_loss_is_the_squared_error_and_sparse_decode_equals_dense():
    torch.manual_seed(1)
    sae = build("topk", d_in=D, d_sae=K, k=k)
    x = _x(1)
    out = sae(x)
    z = out.code.dense(K)
    torch.testing.assert_close(out.recon, z @ sae.W_dec + sae.b_dec)
    torch.testing.assert_close(out.losses["mse"], ((x - out.recon) ** 2).sum(1).mean())
    assert out.losses["auxk"] == 0


def test_auxk_uses_only_dead_latents_and_the_detached_residual():
    torch.manual_seed(2)
    sae = build("topk", d_in=D, d_sae=K, k=k)
    x = _x(2)
    dead = torch.zeros(K, dtype=torch.bool)
    dead[:10] = True
    out = sae(x, StepContext(dead_F=dead))
    assert out.losses["auxk"] > 0
    sae.zero_grad()
    out.losses["auxk"].backward()
    grad_rows = sae.W_dec.grad.abs().sum(1) > 0
    assert not grad_rows[10:].any() and grad_rows[:10].any()


def test_osae_exact_loss_equals_the_prefix_average_and_ones_give_topk():
    torch.manual_seed(3)
    sae = build("osae", d_in=D, d_sae=K, k=k, prefix_law="zipf", prefix_alpha=1.1).double()
    x = _x(3).double()
    out = sae(x)
    z = out.code.dense(K)
    brute = ordered_loss_bruteforce(x - sae.b_dec, z, sae.W_dec, sae.pi.double()).mean()
    torch.testing.assert_close(out.losses["nd"], brute)
    sae.pi.fill_(1.0)
    out = sae(x)
    torch.testing.assert_close(out.losses["nd"], ((x - out.recon) ** 2).sum(1).mean())


def test_osae_full_width_mass_mixes_the_whole_dictionary_into_the_prefix_law():
    """prefix_full_mass m: L = K with probability m, else the law; m = 1 is the plain TopK loss."""
    torch.manual_seed(3)
    plain = build("osae", d_in=D, d_sae=K, k=k, prefix_law="zipf", prefix_alpha=1.1).double()
    mixed = build("osae", d_in=D, d_sae=K, k=k, prefix_law="zipf", prefix_alpha=1.1, prefix_full_mass=0.3)
    torch.testing.assert_close(mixed.pi, 0.7 * plain.pi.float() + 0.3)
    whole = build("osae", d_in=D, d_sae=K, k=k, prefix_full_mass=1.0).double()
    x = _x(3).double()
    out = whole(x)
    torch.testing.assert_close(out.losses["nd"], ((x - out.recon) ** 2).sum(1).mean())
    with pytest.raises(ValueError, match="prefix_full_mass must be in"):
        build("osae", d_in=D, d_sae=K, k=k, prefix_full_mass=1.5)


def test_osae_dense_warmup_path_agrees_with_the_sparse_path():
    torch.manual_seed(4)
    sae = build("osae", d_in=D, d_sae=K, k=k, k_init=K, k_warmup_steps=100).double()
    x = _x(4).double()
    assert sae.k_at(0) == K and sae.k_at(50) == round(K - (K - k) * 0.5) and sae.k_at(100) == k
    dense = sae(x, StepContext(step=0)).losses["nd"]  # k_t = K: the F x F path
    z = torch.relu(sae.pre_acts(x))
    brute = ordered_loss_bruteforce(x - sae.b_dec, z, sae.W_dec, sae.pi.double()).mean()
    torch.testing.assert_close(dense, brute)


def test_osae_sampled_estimator_is_unbiased():
    torch.manual_seed(5)
    sae = build("osae", d_in=D, d_sae=K, k=k, estimator="sample").double()
    x = _x(5, n=16).double()
    exact = build("osae", d_in=D, d_sae=K, k=k).double()
    exact.load_state_dict(sae.state_dict())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        samples = torch.stack([sae(x, StepContext(generator=g)).losses["nd"] for _ in range(3000)])
        expected = float(exact(x).losses["nd"])
    assert float(samples.mean()) == pytest.approx(expected, rel=0.03)


def test_unit_sweeping_schedule_and_rebased_weights():
    sae = build("osae", d_in=D, d_sae=K, k=k, sweep_start=10, sweep_every=5)
    assert [sae.frozen_units(s) for s in (0, 9, 10, 14, 15, 30)] == [0, 0, 1, 1, 2, 5]
    sae.n_frozen.fill_(3)
    pi = sae.effective_pi()
    assert torch.all(pi[:4] == 1) and pi[4] == pytest.approx(float(sae.pi[4] / sae.pi[3]))


def test_matryoshka_loss_is_the_mean_over_levels():
    torch.manual_seed(6)
    sae = build("matryoshka", d_in=D, d_sae=K, k=k, widths=[6, 12, 24, 48])
    x = _x(6)
    out = sae(x)
    z = out.code.dense(K)
    levels = [((x - (z[:, :w] @ sae.W_dec[:w] + sae.b_dec)) ** 2).sum(1).mean() for w in (6, 12, 24, 48)]
    torch.testing.assert_close(out.losses["mse"], sum(levels) / 4)


def test_matryoshka_random_draws_fresh_boundaries_each_step_reproducibly():
    sae = build("matryoshka-random", d_in=D, d_sae=K, k=k, groups=4)
    a, b = sae.levels(3)[0], sae.levels(4)[0]
    assert a == sae.levels(3)[0] and a != b and a[-1] == K and len(a) == 4


def test_batchtopk_threshold_inference():
    torch.manual_seed(7)
    sae = build("batchtopk", d_in=D, d_sae=K, k=k, threshold_start=0)
    sae.train()
    for step in range(5):
        _observe(sae, _x(step), step)
    assert float(sae.threshold) > 0
    sae.eval()
    code = sae.encode(_x(9))
    assert bool((code.vals > float(sae.threshold)).all())


def test_batchtopk_threshold_follows_the_activations_of_a_short_run():
    # The smallest kept activation doubles halfway through a 244-step run: the threshold must end near the
    # new value. A fixed beta of 0.999 (a 1000-step time constant) would end near 1.1.
    sae = build("batchtopk", n_steps=244, d_in=D, d_sae=K, k=k)
    assert sae.cfg.threshold_start == sae.cfg.threshold_window == 24
    for step in range(244):
        sae.update_threshold(torch.tensor(1.0 if step < 122 else 2.0), step)
    assert 1.95 < float(sae.threshold) <= 2.0


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_permutation_leaves_reconstructions_unchanged(arch):
    torch.manual_seed(8)
    sae = build(arch, d_in=D, d_sae=K, k=k).double().eval()
    x = _x(8).double()
    before = sae.decode(sae.encode(x))
    perm = torch.randperm(K)
    sae.permute_(perm)
    torch.testing.assert_close(sae.decode(sae.encode(x)), before)


@pytest.mark.parametrize("arch", ["topk", "relu", "batchtopk"])
def test_folding_the_scale_keeps_reconstructions(arch):
    torch.manual_seed(9)
    sae = build(arch, d_in=D, d_sae=K, k=k, **({"threshold_start": 0} if arch == "batchtopk" else {})).double()
    x = _x(9).double()
    s = 0.37
    if arch == "batchtopk":
        sae.train()
        _observe(sae, x * s, 1)
    sae.eval()
    scaled = sae.decode(sae.encode(x * s)) / s
    sae.fold_scale_(s)
    torch.testing.assert_close(sae.decode(sae.encode(x)), scaled)


def test_decoder_constraint_keeps_unit_atoms_after_a_step():
    torch.manual_seed(10)
    sae = build("topk", d_in=D, d_sae=K, k=k)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    sae(_x(10)).loss.backward()
    sae.remove_parallel_grad_()
    assert float((sae.W_dec.grad * sae.W_dec.detach()).sum(1).abs().max()) < 1e-5
    opt.step()
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(K), atol=1e-6, rtol=0)


def test_hybridorder_reorder_schedule_and_adaptive_l1():
    sae = build("hybridorder", d_in=D, d_sae=K, k=k, reorder_start=4, reorder_every=3, reorder_tau=10.0)
    sae.train()
    out = _observe(sae, _x(11), 0)
    assert float(sae.norm_ma) > 0 and out.losses["l1"] > 0
    assert [sae.reorder_due(s) for s in (0, 3, 4, 6, 7)] == [False, False, False, True, False]
    order = sae.order()
    assert bool((sae.freq_ema[order][:-1] >= sae.freq_ema[order][1:]).all())


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="k must be in"):
        build("topk", d_in=D, d_sae=K, k=K + 1)
    with pytest.raises(ValueError, match="dict size must be positive"):
        build("topk", d_in=D, d_sae=0, k=1)
    with pytest.raises(ValueError, match="unknown architecture"):
        build("sparsemax", d_in=D, d_sae=K, k=k)


@pytest.mark.parametrize(
    "arch,extra",
    [
        ("topk", {}),
        ("osae", {}),
        ("batchtopk", {"threshold_start": 0}),
        ("matryoshka", {"selection": "token", "threshold_start": 0}),
        ("matryoshka", {"selection": "batch", "threshold_start": 0}),
    ],
)
def test_every_top_m_architecture_warms_k_down_from_k_init(arch, extra):
    sae = build(arch, d_in=D, d_sae=K, k=k, k_init=24, k_warmup_steps=10, **extra)
    with torch.no_grad():
        sae.b_enc += 100.0  # every pre-activation positive: the code keeps exactly what the rule selects
    mean_l0 = [float(_observe(sae, _x(s), s).code.l0().float().mean()) for s in (0, 5, 10)]
    assert mean_l0 == pytest.approx([24, 14, k])  # k_t = round(24 - 20 t / 10), then k
    if arch == "batchtopk" or extra.get("selection") == "batch":
        # BatchTopK-style codes: the inference threshold waits for the warm-up's end
        assert float(sae.threshold) > 0
        fresh = build(arch, d_in=D, d_sae=K, k=k, k_init=24, k_warmup_steps=10, **extra)
        _observe(fresh, _x(), 5)
        assert float(fresh.threshold) < 0
