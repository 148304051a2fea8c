import numpy as np
import pytest
import torch

from osae.evaluate.reconstruction import power_law, reconstruction_metrics
from osae.store import ActivationStore, Normalizer
from osae.synthetic import ToyConfig, write_toy_store
from osae.train.architectures import build

from .helpers import identity_sae


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "toy.zarr"
    write_toy_store(path, ToyConfig(d=16, n_atoms=32, m=3, n=4000, n_eval=1000))
    return ActivationStore(path)


def test_metrics_match_a_direct_computation(toy):
    torch.manual_seed(0)
    sae = build("topk", d_in=16, d_sae=32, k=3).eval()
    norm = Normalizer("scalar", scale=0.7)
    m = reconstruction_metrics(sae, norm, toy, "toy", batch=300, granularities=[8, 32])
    x = torch.from_numpy(toy.read_acts("toy", 4000, 5000)).double()
    with torch.no_grad():
        code = sae.encode(x.float() * 0.7)
        recon = (sae.decode(code) / 0.7).double()
        recon8 = (sae.decode(code, upto=8) / 0.7).double()
    sse = ((x - recon) ** 2).sum()
    var = ((x - x.mean(0)) ** 2).sum()
    assert m["n_tokens"] == 1000
    assert m["fvu"] == pytest.approx(float(sse / var), rel=1e-5)
    assert m["mse"] == pytest.approx(float(sse / x.numel()), rel=1e-5)
    assert m["progressive_fvu"][32] == pytest.approx(m["fvu"], rel=1e-9)
    assert m["progressive_fvu"][8] == pytest.approx(float(((x - recon8) ** 2).sum() / var), rel=1e-5)
    assert m["l0"] <= 3 and 0 <= m["dead_fraction"] <= 1
    cos = torch.nn.functional.cosine_similarity(x, recon, dim=1).mean()
    assert m["cosine"] == pytest.approx(float(cos), rel=1e-5)


def test_a_perfect_reconstruction_has_fvu_zero(toy):
    sae = identity_sae(16)
    m = reconstruction_metrics(sae, Normalizer("none"), toy, "toy")
    assert m["fvu"] == pytest.approx(0.0, abs=1e-10) and m["cosine"] == pytest.approx(1.0)


def test_a_known_power_law_is_recovered():
    r = np.arange(1, 2001)
    fit = power_law(3.0 * r**-0.8)
    assert fit["exponent"] == pytest.approx(-0.8, abs=1e-9) and fit["r2"] == pytest.approx(1.0)
    noisy = power_law(3.0 * r**-1.2 * np.exp(np.random.default_rng(0).normal(0, 0.05, len(r))))
    assert noisy["exponent"] == pytest.approx(-1.2, abs=0.02) and noisy["r2"] > 0.99


def test_the_top_ranks_fit_ignores_a_bent_tail():
    r = np.arange(1, 1001)
    v = r**-0.8 * np.where(r > 900, np.exp(-(r - 900) / 10.0), 1.0)  # the last 10% of ranks fall away
    whole, top = power_law(v), power_law(v, top=0.9)
    assert top["n"] == 900 and top["exponent"] == pytest.approx(-0.8, abs=1e-9) and top["r2"] == pytest.approx(1.0)
    assert whole["r2"] < 0.9 and whole["exponent"] < -0.9


def test_rsa_is_one_for_a_perfect_reconstruction_and_lower_otherwise(toy):
    from osae.evaluate.reconstruction import rsa

    sae = identity_sae(16)
    r = rsa(sae, Normalizer("none"), toy, "toy", n=100, repeats=3)
    assert r["rsa"] == pytest.approx(1.0) and r["rsa_n"] == 100
    with torch.no_grad():
        sae.W_dec[16:] = 0  # keep only the positive parts
    assert rsa(sae, Normalizer("none"), toy, "toy", n=100, repeats=3)["rsa"] < 0.99


@pytest.mark.parametrize("arch", ["topk", "relu", "batchtopk"])
def test_sparsity_statistics_match_the_dense_code_for_every_kind_of_code(toy, arch):
    torch.manual_seed(1)
    sae = build(arch, d_in=16, d_sae=32, k=3).eval()
    if arch == "batchtopk":
        sae.threshold.fill_(0.2)  # the inference rule: a per-token threshold (flat codes, varying counts)
    m = reconstruction_metrics(sae, Normalizer("none"), toy, "toy", batch=256, granularities=[32])
    x = torch.from_numpy(toy.read_acts("toy", 4000, 5000)).float()
    with torch.no_grad():
        z = sae.encode(x).dense(32).double()
    assert m["l0"] == pytest.approx(float((z > 0).sum(1).double().mean()), rel=1e-9)
    assert m["l1"] == pytest.approx(float(z.abs().sum(1).mean()), rel=1e-5)
    np.testing.assert_allclose(m["freq"], (z > 0).double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(m["ea2"], (z**2).mean(0).numpy(), rtol=1e-5)
    assert m["dead_fraction"] == pytest.approx(float(((z > 0).sum(0) == 0).double().mean()))
