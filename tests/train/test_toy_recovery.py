"""The OSAE paper's toy claim, checked on its Gaussian toy data (methods.md 5): OSAE recovers the ground-truth
dictionary in the ground-truth order; BatchTopK recovers the atoms but in no particular order."""

import numpy as np
import pytest

from osae.evaluate.consistency import stab_ord
from osae.store import ActivationStore
from osae.synthetic import ToyConfig, write_toy_store
from osae.train.checkpoint import load_frozen
from osae.train.config import SAESpec, TrainConfig
from osae.train.fit import fit


@pytest.mark.slow
def test_osae_recovers_the_ordered_ground_truth_and_batchtopk_does_not_order_it(tmp_path):
    store = tmp_path / "toy.zarr"
    write_toy_store(store, ToyConfig())  # d=80, K=100, m=5, N=100,000, Zipf 1.2
    epoch = 100_000 // 1024
    specs = []
    for seed in range(3):
        # k warm-up from K over 3 epochs, then unit sweeping from epoch 6, one unit every 8 steps (a shortened
        # version of the paper's 130-epoch schedule; see docs/results.md for the full one).
        specs.append(
            SAESpec(
                "osae",
                seed,
                {
                    "d_sae": 100,
                    "k": 5,
                    "k_init": 100,
                    "k_warmup_steps": 3 * epoch,
                    "aux_k_coef": 0.0,
                    "sweep_start": 6 * epoch,
                    "sweep_every": 8,
                },
                lr=3e-3,
            )
        )
        specs.append(SAESpec("batchtopk", seed, {"d_sae": 100, "k": 5, "aux_k_coef": 0.0}, lr=3e-3))
    fit(
        TrainConfig(
            store=str(store),
            out=str(tmp_path / "run"),
            saes=specs,
            tokens=15 * epoch * 1024,
            batch_size=1024,
            normalization="none",
            lr_warmup_steps=50,
            optimizer="adam",  # the paper's protocol
            checkpoint_every=10**9,
            log_every=200,
            buffer_bytes=2**26,
        ),
        progress=False,
    )
    truth = ActivationStore(store).ground_truth()["dictionary"]
    result = {}
    for arch in ("osae", "batchtopk"):
        pairs = [stab_ord(load_frozen(tmp_path / "run" / f"{arch}-K100-k5-s{s}")[0].W_dec, truth) for s in range(3)]
        result[arch] = np.mean(pairs, axis=0)
    stab, ord_ = result["osae"]
    assert stab >= 0.75 and ord_ >= 0.65, result  # the paper: 0.814 and 0.734
    assert ord_ > result["batchtopk"][1] + 0.3, result
