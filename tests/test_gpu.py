"""Checks that need a CUDA device (skipped without one): training with bf16 autocast and a float16 harvest,
run as users run them (`osae ...` processes), with their results read back on the CPU."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

STEPS, BATCH = 20, 512


def osae(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "osae", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OSAE_DEBUG": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_fit_on_cuda_with_bf16_autocast_loads_on_cpu(tmp_path):
    from osae.train.checkpoint import load_frozen

    osae("toy", "--out", tmp_path / "toy.zarr", "--n", 20000, "--n-eval", 2000)
    osae(
        "fit",
        "--store",
        tmp_path / "toy.zarr",
        "--out",
        tmp_path / "run",
        "--arch",
        "osae",
        "--dict-size",
        128,
        "--k",
        5,
        "--seeds",
        "0,1",
        "--tokens",
        STEPS * BATCH,
        "--batch-size",
        BATCH,
        "--lr-warmup-steps",
        2,
        "--device",
        "cuda",
        "--autocast",
        "bf16",
    )
    for seed in (0, 1):
        ckpt = tmp_path / "run" / f"osae-K128-k5-s{seed}"
        lines = [json.loads(l) for l in (ckpt / "metrics.jsonl").read_text().splitlines()]
        assert lines[-1]["step"] == STEPS and all(np.isfinite(l["loss"]) for l in lines)
        assert lines[-1]["l0"] <= 5 + 1e-6
        sae, config = load_frozen(ckpt, device="cpu")
        assert config["step"] == STEPS and next(sae.parameters()).device.type == "cpu"
        assert all(torch.isfinite(p).all() for p in sae.parameters())
        x = torch.randn(64, config["d_in"])
        out = sae(x)
        assert torch.isfinite(out.recon).all() and out.recon.shape == x.shape


def test_harvest_in_float16_on_cuda_matches_a_cpu_forward(tmp_path):
    from transformers import AutoModelForCausalLM

    from osae.store import ActivationStore
    from tests.harvest.tiny import save_tiny_model, text_dir

    model_dir = save_tiny_model("gpt_neox", tmp_path / "model")
    osae(
        "harvest",
        "--model",
        model_dir,
        "--dataset",
        text_dir(tmp_path / "docs"),
        "--layer",
        1,
        "--tokens",
        2000,
        "--context-size",
        32,
        "--batch-size",
        8,
        "--dtype",
        "float16",
        "--device",
        "cuda",
        "--out",
        tmp_path / "h.zarr",
    )
    store = ActivationStore(tmp_path / "h.zarr")
    hook = "blocks.1.hook_resid_post"
    assert (
        store.complete
        and store.dtype(hook) == "float16"
        and store.meta["provenance"]["harvest_args"]["dtype"] == "float16"
    )
    windows = store.array("sequences/context")[: store.n_sequences]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(windows).long(), output_hidden_states=True).hidden_states[2][:, 1:]
    got = store.read_acts(hook, 0, store.n_tokens).astype(np.float32).reshape(want.shape)
    assert np.isfinite(got).all()
    # float16 compute on the GPU against a float32 CPU forward: agreement to float16 precision.
    np.testing.assert_allclose(got, want.numpy(), rtol=2e-2, atol=2e-2)
