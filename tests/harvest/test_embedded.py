"""The embedded default model: shipped, small, loadable offline, and the default of `osae harvest`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from osae.harvest.models import EMBEDDED_DIR, load_model
from osae.store import ActivationStore

pytestmark = pytest.mark.skipif(not (EMBEDDED_DIR / "config.json").exists(), reason="the embedded model is not built")


def test_the_embedded_model_is_small_and_has_a_model_card():
    size = sum(p.stat().st_size for p in EMBEDDED_DIR.iterdir() if p.is_file())
    assert size <= 20 * 2**20
    card = (EMBEDDED_DIR / "README.md").read_text()
    report = json.loads((EMBEDDED_DIR / "training.json").read_text())
    assert f"{report['heldout_loss']:.3f}" in card and f"{report['unigram_loss']:.3f}" in card
    assert report["heldout_loss"] < report["unigram_loss"] - 1.0  # it learned far more than token frequencies


def test_harvest_without_a_model_uses_the_embedded_one_offline(tmp_path):
    out = tmp_path / "acts.zarr"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "osae", "harvest", "--layer", "3", "--tokens", "3000", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    store = ActivationStore(out)
    assert list(store.hooks) == ["blocks.3.hook_resid_post"] and store.d_model("blocks.3.hook_resid_post") == 256
    assert store.meta["provenance"]["model"]["name"] == "osae-stdlib"
    assert store.meta["provenance"]["dataset"]["kind"] == "stdlib"
    x = store.read_acts("blocks.3.hook_resid_post", 0, store.n_tokens).astype(np.float32)
    assert np.isfinite(x).all() and x.std() > 0


def test_the_embedded_model_predicts_python():
    import torch

    lm = load_model(None, device="cpu")
    text = "import os\nimport sys\n\n\ndef main():\n    return 0\n"
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids).loss
    assert float(loss) < 4.0
