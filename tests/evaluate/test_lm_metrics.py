import pytest
import torch

from osae.evaluate.lm_metrics import lm_metrics
from osae.harvest import HarvestConfig, harvest
from osae.harvest.models import EMBEDDED_DIR, load_model
from osae.store import ActivationStore, Normalizer

from .helpers import identity_sae

pytestmark = pytest.mark.skipif(not (EMBEDDED_DIR / "config.json").exists(), reason="the embedded model is not built")


@pytest.fixture(scope="module")
def harvested(tmp_path_factory):
    # A trained model, so that ablating its residual stream really costs loss (a random one barely cares).
    root = tmp_path_factory.mktemp("lm")
    harvest(
        HarvestConfig(
            out=str(root / "s.zarr"), layers=[1], tokens=8000, context_size=32, store_dtype="float32", eval_fraction=0.3
        ),
        progress=False,
    )
    return load_model(None, device="cpu").model, ActivationStore(root / "s.zarr")


def test_a_perfect_reconstruction_recovers_all_the_loss_and_has_no_kl(harvested):
    model, store = harvested
    m = lm_metrics(model, identity_sae(256), Normalizer("none"), store, "blocks.1.hook_resid_post", max_tokens=2000)
    assert m["ce_loss_spliced"] == pytest.approx(m["ce_loss_clean"], abs=1e-5)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6) and m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert m["ce_loss_ablated"] > m["ce_loss_clean"] and m["lm_windows"] > 0


def test_a_useless_reconstruction_recovers_nothing(harvested):
    model, store = harvested
    sae = identity_sae(256)
    with torch.no_grad():
        sae.W_dec.zero_()  # reconstructs every activation as 0: the zero ablation itself
    m = lm_metrics(model, sae, Normalizer("none"), store, "blocks.1.hook_resid_post", max_tokens=2000)
    assert m["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-5) and m["kl"] > 0


def test_progressive_ce_equals_the_ce_of_an_sae_cut_to_its_first_g_latents(harvested):
    model, store = harvested
    hook = "blocks.1.hook_resid_post"
    m = lm_metrics(
        model, identity_sae(256), Normalizer("none"), store, hook, max_tokens=1000, granularities=[64, 300, 512]
    )
    assert set(m["progressive_ce"]) == {64, 300, 512}
    assert m["progressive_ce"][512] == m["ce_loss_spliced"]
    for g in (64, 300):
        cut = identity_sae(256)
        with torch.no_grad():
            cut.W_dec[g:] = 0  # the first g latents alone decode
        direct = lm_metrics(model, cut, Normalizer("none"), store, hook, max_tokens=1000)
        assert m["progressive_ce"][g] == pytest.approx(direct["ce_loss_spliced"], rel=1e-6)
        assert m["progressive_ce_recovered"][g] == pytest.approx(direct["ce_loss_recovered"], rel=1e-5)
    assert m["progressive_ce"][64] > m["progressive_ce"][300] > m["progressive_ce"][512]
