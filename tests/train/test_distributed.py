"""Every architecture trains the same SAE under two processes as under one (accelerate on CPU, gloo).

Each process holds half of every batch. What must see the whole batch (BatchTopK's selection and threshold,
AuxK's normaliser, HybridOrder's input norm, firing shares and reorders, OSAE's sampled prefixes, dead
counters, logged metrics) goes through the trainer's collective, so the weights and buffers agree with the
one-process run to float rounding."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from osae.train.config import SAESpec, TrainConfig
from tests.launch import accelerate_launch
from tests.train.test_trainer import toy  # noqa: F401  (the shared toy store fixture)

pytestmark = pytest.mark.slow

SAES = [
    SAESpec("topk", 0, {"d_sae": 32, "k": 3}, lr=3e-3),
    SAESpec("batchtopk", 0, {"d_sae": 32, "k": 3, "threshold_start": 2}, lr=3e-3),
    SAESpec("matryoshka", 0, {"d_sae": 32, "k": 3, "threshold_start": 2}, lr=3e-3),
    SAESpec("matryoshka-random", 0, {"d_sae": 32, "k": 3, "groups": 3, "threshold_start": 2}, lr=3e-3),
    SAESpec(
        "osae", 0, {"d_sae": 32, "k": 3, "k_init": 12, "k_warmup_steps": 6, "sweep_start": 8, "sweep_every": 3}, lr=3e-3
    ),
    SAESpec("osae", 1, {"d_sae": 32, "k": 3, "estimator": "sample"}, lr=3e-3),
    SAESpec("relu", 0, {"d_sae": 32, "l1_coef": 0.5, "l1_warmup_steps": 5}, lr=3e-3),
    SAESpec("hybridorder", 0, {"d_sae": 32, "l1_coef": 0.05, "reorder_start": 3, "reorder_every": 11}, lr=3e-3),
]

RUN = (
    "import json, logging, sys\nfrom osae.train.config import TrainConfig\nfrom osae.train.fit import fit\n"
    "logging.basicConfig(level=logging.INFO)\n"
    "fit(TrainConfig.from_dict(json.loads(open(sys.argv[1]).read())), progress=False)\n"
)


def _train(tmp_path, toy_store, name, processes, saes=SAES, **options):
    # A short dead window, so that AuxK acts within the run; accumulation exercises statistics between updates.
    cfg = TrainConfig(
        store=str(toy_store),
        out=str(tmp_path / name),
        saes=saes,
        tokens=256 * 24,
        batch_size=256,
        accum_steps=2,
        lr_warmup_steps=2,
        checkpoint_every=10,
        log_every=4,
        buffer_bytes=2**20,
        dead_window_tokens=768,
        **options,
    )
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "run.py").write_text(RUN)
    launch = [sys.executable] if processes == 1 else accelerate_launch(processes)
    done = subprocess.run(
        [*launch, str(tmp_path / "run.py"), str(tmp_path / f"{name}.json")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (tmp_path / f"{name}.log").write_text(done.stderr)
    return tmp_path / name


def test_two_processes_train_every_architecture_as_one(toy, tmp_path):  # noqa: F811
    one, two = _train(tmp_path, toy, "one", 1), _train(tmp_path, toy, "two", 2)
    names = sorted(p.name for p in one.iterdir() if (p / "sae.safetensors").exists())
    assert len(names) == len(SAES)
    for name in names:
        a, b = load_file(str(one / name / "sae.safetensors")), load_file(str(two / name / "sae.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=2e-5, msg=f"{name} {key}")
        lines = [[json.loads(l) for l in (run / name / "metrics.jsonl").read_text().splitlines()] for run in (one, two)]
        assert [l["step"] for l in lines[0]] == [l["step"] for l in lines[1]]
        for la, lb in zip(*lines):
            for key in ("loss", "fvu", "l0", "dead_fraction"):
                assert la[key] == pytest.approx(lb[key], rel=1e-4, abs=1e-6), (name, key, la["step"])
    # The run really exercised the whole-batch statistics.
    state = load_file(str(one / "batchtopk-K32-k3-s0" / "sae.safetensors"))
    assert float(state["threshold"]) > 0
    hybrid = load_file(str(one / "hybridorder-K32-kNA-s0" / "sae.safetensors"))
    # Reorders are due at micro-batches 11 and 22, inside the accumulated updates ending at 11 and 23 (the last).
    assert bool((hybrid["freq_ema"][:-1] >= hybrid["freq_ema"][1:]).all())


def test_sae_parallel_processes_each_train_their_share_exactly_as_one_process(toy, tmp_path):  # noqa: F811
    """--parallel sae: each process reads whole batches and trains every second SAE alone; the SAEs, their
    metrics and the run state are those of the one-process run (SAEs do not interact)."""
    saes = [SAES[0], SAES[1], SAES[4]]  # topk, batchtopk, osae with its k warm-up and unit sweeping
    one = _train(tmp_path, toy, "one", 1, saes=saes)
    two = _train(tmp_path, toy, "two", 2, saes=saes, parallel="sae")
    for spec in saes:
        a, b = (load_file(str(run / spec.name / "sae.safetensors")) for run in (one, two))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=f"{spec.name} {key}")
        lines = [(run / spec.name / "metrics.jsonl").read_text().splitlines() for run in (one, two)]
        assert [json.loads(l)["step"] for l in lines[0]] == [json.loads(l)["step"] for l in lines[1]]
        assert len(list((two / spec.name / "state").iterdir())) == 1  # older states pruned by their owner
    assert json.loads((two / "run_state.json").read_text())["step"] == 24
    log = (tmp_path / "two.log").read_text()
    assert f"process 0 of 2 trains {saes[0].name}, {saes[2].name}" in log
    assert f"process 1 of 2 trains {saes[1].name}" in log
