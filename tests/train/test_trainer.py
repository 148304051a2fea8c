import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from osae.errors import CheckpointError, StoreError
from osae.store import StoreWriter, hook_spec
from osae.synthetic import ToyConfig, write_toy_store
from osae.train.checkpoint import load_frozen
from osae.train.config import SAESpec, TrainConfig
from osae.train.fit import fit
from tests.launch import accelerate_launch


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy.zarr"
    write_toy_store(path, ToyConfig(d=16, n_atoms=32, m=3, n=20000, n_eval=2000))
    return path


def _cfg(toy, out, saes, **kw):
    base = dict(
        store=str(toy),
        out=str(out),
        saes=saes,
        tokens=256 * 40,
        batch_size=256,
        lr_warmup_steps=5,
        checkpoint_every=10,
        log_every=5,
        buffer_bytes=2**20,
        dead_window_tokens=2000,
    )
    return TrainConfig(**{**base, **kw})


def _weights(run: Path) -> dict:
    return {
        d.name: load_file(str(d / "sae.safetensors")) for d in sorted(run.iterdir()) if (d / "sae.safetensors").exists()
    }


def test_many_saes_in_one_pass_equal_each_trained_alone(toy, tmp_path):
    specs = [SAESpec("osae", 0, {"d_sae": 32, "k": 3}, lr=1e-3), SAESpec("topk", 1, {"d_sae": 32, "k": 3}, lr=1e-3)]
    fit(_cfg(toy, tmp_path / "both", specs), progress=False)
    fit(_cfg(toy, tmp_path / "one", specs[:1]), progress=False)
    both, one = _weights(tmp_path / "both"), _weights(tmp_path / "one")
    assert set(both) == {"osae-K32-k3-s0", "topk-K32-k3-s1"}
    for key, t in one["osae-K32-k3-s0"].items():
        assert torch.equal(t, both["osae-K32-k3-s0"][key]), key
    sae, config = load_frozen(tmp_path / "both" / "topk-K32-k3-s1")
    assert config["architecture"] == "topk" and config["step"] == 40 and config["final"]
    assert config["normalization"]["kind"] == "scalar" and len(config["store_fingerprint"]) == 32
    lines = [json.loads(l) for l in (tmp_path / "both" / "osae-K32-k3-s0" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert lines[-1]["fvu"] < lines[0]["fvu"] and all(l["l0"] <= 3 for l in lines)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_killed_fit_resumes_to_bitwise_the_same_weights(toy, tmp_path):
    specs = [
        {"arch": "osae", "seed": 0, "config": {"d_sae": 32, "k": 3, "estimator": "sample"}, "lr": 1e-3},
        {"arch": "batchtopk", "seed": 2, "config": {"d_sae": 32, "k": 3, "threshold_start": 3}, "lr": 1e-3},
        {"arch": "hybridorder", "seed": 3, "config": {"d_sae": 32, "reorder_start": 3, "reorder_every": 7}, "lr": 1e-3},
    ]
    cfg = _cfg(toy, tmp_path / "ref", specs, tokens=256 * 60, checkpoint_every=8, accum_steps=2)
    fit(cfg, progress=False)
    cut = cfg.to_dict() | {"out": str(tmp_path / "cut")}
    script = tmp_path / "run.py"
    script.write_text(
        "import json\nfrom osae.train.config import TrainConfig\nfrom osae.train.fit import fit\n"
        f"fit(TrainConfig.from_dict(json.loads({json.dumps(json.dumps(cut))})), progress=False)\n"
    )
    # Killed after step 21: checkpoints at 8 and 16 are durable, the metrics line of step 20 is not yet covered.
    proc = subprocess.run([sys.executable, str(script)], env={**os.environ, "OSAE_KILL_AT": "fit-step:21"})
    assert proc.returncode == -signal.SIGKILL
    state = tmp_path / "cut" / "run_state.json"
    assert json.loads(state.read_text())["step"] == 16
    fit(resume=str(tmp_path / "cut"), progress=False)
    ref, got = _weights(tmp_path / "ref"), _weights(tmp_path / "cut")
    for name in ref:
        for key in ref[name]:
            assert torch.equal(ref[name][key], got[name][key]), (name, key)
    lines = (tmp_path / "cut" / "osae-K32-k3-s0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == list(range(5, 61, 5))


def test_resume_with_changed_arguments_is_refused(toy, tmp_path):
    specs = [SAESpec("topk", 0, {"d_sae": 32, "k": 3})]
    cfg = _cfg(toy, tmp_path / "r", specs, tokens=256 * 12)
    fit(cfg, progress=False)
    with pytest.raises(ValueError, match="changed arguments .*tokens"):
        fit(_cfg(toy, tmp_path / "r", specs, tokens=256 * 20), resume=str(tmp_path / "r"), progress=False)
    assert fit(resume=str(tmp_path / "r"), progress=False)["already_finished"]
    assert fit(cfg, progress=False)["already_finished"]  # the same command again: nothing to do
    refusal = "holds a run with other settings .*tokens: 3072 -> 5120.*osae fit --resume .*--overwrite"
    with pytest.raises(ValueError, match=refusal):
        fit(_cfg(toy, tmp_path / "r", specs, tokens=256 * 20), progress=False)


@pytest.mark.parametrize("optimizer", ["adam", "signum-sf"])
def test_unit_sweeping_freezes_exactly_the_scheduled_units(toy, tmp_path, optimizer):
    from osae.train import trainer as T

    spec = SAESpec("osae", 0, {"d_sae": 32, "k": 3, "sweep_start": 10, "sweep_every": 5}, lr=1e-2)
    cfg = _cfg(toy, tmp_path / "s", [spec], tokens=256 * 30, checkpoint_every=1000, optimizer=optimizer)

    frozen_seen = []
    orig = T.Trainer._update

    def spy(self, m, step):
        w = m.sae.W_dec.detach().clone()
        orig(self, m, step)
        f = m.sae.frozen_units(step)
        if f:
            assert torch.equal(m.sae.W_dec.detach()[:f], w[:f]), step
            assert not torch.equal(m.sae.W_dec.detach()[f:], w[f:])
            if optimizer == "signum-sf":  # the averaged SAE that is saved stays put too
                assert torch.equal(m.opt.state[m.sae.W_dec]["x"][:f], w[:f]), step
        frozen_seen.append(f)

    T.Trainer._update = spy
    try:
        fit(cfg, progress=False)
    finally:
        T.Trainer._update = orig
    assert frozen_seen[:10] == [0] * 10 and frozen_seen[10:15] == [1] * 5 and frozen_seen[-1] == 4


@pytest.mark.parametrize("optimizer", ["adam", "adam-lazy"])
def test_hybridorder_reorder_commutes_with_training(optimizer):
    """Permuting parameters and Adam state, then stepping, equals stepping and then permuting (fp64)."""
    from osae.store import Normalizer
    from osae.train.batches import TensorBatches
    from osae.train.optimizers import make_optimizer
    from osae.train.trainer import Trainer

    torch.manual_seed(0)
    xs = [torch.randn(64, 8, dtype=torch.float64) for _ in range(12)]
    spec = SAESpec(
        "hybridorder", 0, {"d_sae": 16, "reorder_start": 12}, lr=1e-2
    )  # 12 steps: its own reorders never come
    cfg = TrainConfig(store="unused", out="/nonexistent", saes=[spec], tokens=64 * 12, batch_size=64, lr_warmup_steps=1)
    runs = []
    for permute_at in (None, 6):
        tr = Trainer(cfg, TensorBatches(torch.cat(xs).float(), 64), d_in=8, normalizer=Normalizer("none"), meta={})
        m = tr.members[0]
        m.sae.double()
        m.opt = make_optimizer(optimizer, m.sae.parameters(), 1e-2, (0.9, 0.999), 1e-8)
        m.names = {id(p): n for n, p in m.sae.named_parameters()}
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
        for step, x in enumerate(xs):
            if step == permute_at:
                tr.reorder(m, perm)
            tr.step = step
            tr._train_step(m, x)
        runs.append(m.sae)
    ref, got = runs
    inv = torch.argsort(perm)
    torch.testing.assert_close(got.W_dec.detach()[inv], ref.W_dec.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.b_enc.detach()[inv], ref.b_enc.detach(), rtol=1e-10, atol=1e-10)


def test_hybridorder_reorders_on_schedule_under_gradient_accumulation(toy, tmp_path):
    """Scheduled micro-batches 12, 18, 24, 30, 36 fall inside the updates ending at 15, 19, 27, 31 and 39; the
    old rule looked only at each update's last micro-batch (t % 4 == 3), where t % 6 == 0 never holds."""
    config = {"d_sae": 32, "reorder_start": 8, "reorder_every": 6, "reorder_tau": 10.0}  # tau: no variance trigger
    spec = SAESpec("hybridorder", 0, config, lr=1e-3)
    fit(_cfg(toy, tmp_path / "run", [spec], accum_steps=4, log_every=8, checkpoint_every=8), progress=False)
    lines = [json.loads(l) for l in (tmp_path / "run" / spec.name / "metrics.jsonl").read_text().splitlines()]
    assert [(l["step"], l["reorders"]) for l in lines] == [(8, 0), (16, 1), (24, 2), (32, 4), (40, 5)]


def test_random_matryoshka_with_reorder_ema_resorts_after_every_update(toy, tmp_path):
    config = {"d_sae": 32, "k": 3, "groups": 3, "selection": "token", "reorder_ema": 0.9}
    spec = SAESpec("matryoshka-random", 0, config, lr=1e-3)
    fit(_cfg(toy, tmp_path / "run", [spec], tokens=256 * 20, log_every=10, checkpoint_every=10), progress=False)
    lines = [json.loads(l) for l in (tmp_path / "run" / spec.name / "metrics.jsonl").read_text().splitlines()]
    assert [(l["step"], l["reorders"]) for l in lines] == [(10, 10), (20, 20)]
    weights = load_file(str(tmp_path / "run" / spec.name / "sae.safetensors"))
    ema = weights["importance_ema"]
    assert float(ema[0]) > 0 and bool((ema[:-1] >= ema[1:]).all())  # the last update left them sorted


def _store_with(path, bad_rows, value: float) -> Path:
    """4096 random rows of width 8 with `value` written into `bad_rows` (NaN: bad activations; 1e30: finite
    rows whose squared error overflows float32, a non-finite loss)."""
    w = StoreWriter.create(
        path,
        hooks={"h": hook_spec(0, 8, "float32")},
        has_tokens=False,
        chunk_rows=256,
        split={"rule": "explicit-chunks", "eval_chunks": [15]},
    )
    x = np.random.default_rng(0).standard_normal((4096, 8)).astype(np.float32)
    x[bad_rows] = value
    w.write({"h": x})
    w.close()
    return path


# A 14-step TopK run on a small store, with the raw rows (no normalisation, no data-dependent init).
NONFINITE_RUN = dict(
    saes=[SAESpec("topk", 0, {"d_sae": 16, "k": 2})],
    tokens=256 * 14,
    batch_size=256,
    buffer_bytes=256 * 8 * 4 * 4,
    normalization="none",
    b_dec_init="zero",
)


def test_nonfinite_batches_are_skipped_or_stop_and_no_nan_is_written(tmp_path):
    path = _store_with(tmp_path / "nan.zarr", (slice(1000, 1256), 3), np.nan)
    run = dict(store=str(path), **NONFINITE_RUN)
    out = fit(TrainConfig(out=str(tmp_path / "skip"), **run), progress=False)
    assert out["skipped_batches"] >= 1
    for t in load_file(str(tmp_path / "skip" / "topk-K16-k2-s0" / "sae.safetensors")).values():
        assert torch.isfinite(t).all()
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit(TrainConfig(out=str(tmp_path / "stop"), nonfinite="stop", **run), progress=False)


@pytest.mark.parametrize("optimizer", ["adam", "signum-sf"])
def test_a_nonfinite_loss_is_skipped_or_stops_under_any_optimizer_and_no_nan_is_written(tmp_path, optimizer):
    run = dict(NONFINITE_RUN, log_every=14, optimizer=optimizer)
    store = str(_store_with(tmp_path / "few.zarr", slice(1000, 1004), 1e30))
    fit(TrainConfig(store=store, out=str(tmp_path / "skip"), **run), progress=False)
    sae_dir = tmp_path / "skip" / "topk-K16-k2-s0"
    line = json.loads((sae_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["nonfinite_skipped"] >= 1 and line["step"] == 14
    for t in load_file(str(sae_dir / "sae.safetensors")).values():
        assert torch.isfinite(t).all()
    with pytest.raises(ValueError, match=r"loss is not finite at step \d+ \(--nonfinite stop\)"):
        fit(TrainConfig(store=store, out=str(tmp_path / "stop"), nonfinite="stop", **run), progress=False)
    store = str(_store_with(tmp_path / "all.zarr", slice(None), 1e30))
    with pytest.raises(ValueError, match="for the last 20 batches: training has diverged"):
        fit(TrainConfig(store=store, out=str(tmp_path / "diverged"), **{**run, "tokens": 256 * 30}), progress=False)


def test_schedule_free_signum_trains_and_saves_its_averaged_unit_norm_sae(toy, tmp_path):
    specs = [SAESpec("topk", 0, {"d_sae": 32, "k": 3})]
    fit(_cfg(toy, tmp_path / "sf", specs, optimizer="signum-sf", tokens=256 * 60, checkpoint_every=25), progress=False)
    sae_dir = tmp_path / "sf" / "topk-K32-k3-s0"
    lines = [json.loads(l) for l in (sae_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["fvu"] < 0.5 * lines[0]["fvu"]
    assert lines[-1]["lr"] == pytest.approx(5e-3 / (32 / 2**14) ** 0.5)  # no decay: schedule-free
    saved = load_file(str(sae_dir / "sae.safetensors"))
    torch.testing.assert_close(saved["W_dec"].norm(dim=1), torch.ones(32))
    state = sorted((sae_dir / "state").iterdir())[-1]
    tensors = load_file(str(state / "tensors.safetensors"))
    # the saved SAE is the average x (renormalised), not the parameters y that gradients were taken at
    x = tensors["opt.W_enc.x"]
    assert torch.equal(saved["W_enc"], x) and not torch.equal(saved["W_enc"], tensors["sae.W_enc"])


@pytest.mark.parametrize("optimizer", ["adam", "signum-sf"])
def test_the_fvu_loss_scaling_divides_by_the_batch_variance(toy, tmp_path, optimizer):
    specs = [SAESpec("topk", 0, {"d_sae": 32, "k": 3}, lr=1e-3)]
    runs = {}
    for scale in ("mse", "fvu"):
        fit(_cfg(toy, tmp_path / scale, specs, loss_scale=scale, optimizer=optimizer), progress=False)
        runs[scale] = [json.loads(l) for l in (tmp_path / scale / "topk-K32-k3-s0" / "metrics.jsonl").open()]
    first_mse, first_fvu = runs["mse"][0], runs["fvu"][0]
    # the same first batches (same weights until the first update): the losses differ by the batch variance
    ratio = first_mse["loss"] / first_fvu["loss"]
    assert (
        0.5 * first_mse["sse_per_token"] / first_mse["fvu"] < ratio < 2 * first_mse["sse_per_token"] / first_mse["fvu"]
    )
    if optimizer == "signum-sf":  # sign descent ignores a positive scale of the gradient: the same SAE
        mse, fvu = (_weights(tmp_path / scale)["topk-K32-k3-s0"] for scale in ("mse", "fvu"))
        for key in mse:
            torch.testing.assert_close(fvu[key], mse[key], rtol=1e-5, atol=1e-6, msg=key)
    else:  # Adam is invariant to a constant scale; the batch variance is nearly constant
        assert runs["fvu"][-1]["fvu"] == pytest.approx(runs["mse"][-1]["fvu"], rel=0.05)
        assert runs["fvu"][-1]["fvu"] < 0.9 * first_fvu["fvu"]


def test_bad_settings_are_refused(toy, tmp_path):
    with pytest.raises(ValueError, match="k=9 is larger than the dictionary size 8"):
        fit(_cfg(toy, tmp_path / "a", [SAESpec("topk", 0, {"d_sae": 8, "k": 9})]), progress=False)
    with pytest.raises(StoreError, match="no hook 'nope'"):
        fit(_cfg(toy, tmp_path / "b", [SAESpec("topk", 0, {"d_sae": 8, "k": 2})], hook="nope"), progress=False)
    for key, val, msg in (("batch_size", 0, "batch-size must be positive"), ("tokens", -5, "tokens must be positive")):
        with pytest.raises(ValueError, match=msg):
            _cfg(toy, tmp_path / "c", [SAESpec("topk", 0, {"d_sae": 8, "k": 2})], **{key: val})
    with pytest.raises(ValueError, match="lr must be positive"):
        SAESpec("topk", 0, {"d_sae": 8, "k": 2}, lr=0)
    with pytest.raises(CheckpointError, match="not an osae run directory"):
        fit(resume=str(tmp_path), progress=False)


@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one(toy, tmp_path):
    args = [
        "fit",
        "--store",
        str(toy),
        "--arch",
        "topk",
        "--dict-size",
        "32",
        "--k",
        "3",
        "--seeds",
        "0",
        "--tokens",
        str(256 * 20),
        "--batch-size",
        "256",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "7",
    ]
    one = subprocess.run(
        [sys.executable, "-m", "osae", *args, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            *accelerate_launch(2),
            "-m",
            "osae",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert set(a) == set(b) == {"topk-K32-k3-s0"}
    for key in a["topk-K32-k3-s0"]:
        torch.testing.assert_close(a["topk-K32-k3-s0"][key], b["topk-K32-k3-s0"][key], rtol=1e-4, atol=1e-5)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(toy, tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        # Each generation of this SAE's state is about 200 KB: the first fits, the second does not.
        spec = [SAESpec("topk", 0, {"d_sae": 1024, "k": 3}, lr=1e-3)]
        with pytest.raises(CheckpointError, match="disk full while checkpointing .* previous checkpoint is intact"):
            fit(_cfg(toy, mount / "run", spec, tokens=256 * 30, checkpoint_every=10), progress=False)
        state = json.loads((mount / "run" / "run_state.json").read_text())
        assert state["step"] == 10 and not state["finished"]
        sae, config = load_frozen(mount / "run" / "topk-K1024-k3-s0")
        assert config["step"] in (10, 20)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_run_draws_its_training_curves(toy, tmp_path):
    from osae.train.curves import PANELS, read_metrics, write_training_curves

    specs = [SAESpec("topk", 0, {"d_sae": 32, "k": 3}), SAESpec("matryoshka", 0, {"d_sae": 32, "k": 3})]
    fit(_cfg(toy, tmp_path / "run", specs), progress=False)
    png = tmp_path / "run" / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    lines = read_metrics(tmp_path / "run" / specs[0].name / "metrics.jsonl")
    assert len(lines) == 8 and all(key in lines[0] for key, _, _ in PANELS)  # every panel has its series
    assert write_training_curves(tmp_path / "run", ["no-such-sae"], tmp_path / "x.png") is None


def test_the_count_of_nonfinite_losses_survives_a_kill_and_resume(tmp_path):
    store = str(_store_with(tmp_path / "few.zarr", slice(0, 3000, 97), 1e30))  # bad rows all through the run
    run = dict(NONFINITE_RUN, store=store, log_every=14, checkpoint_every=7)
    fit(TrainConfig(out=str(tmp_path / "whole"), **run), progress=False)
    script = (
        "import sys, json\nfrom osae.train.config import TrainConfig\nfrom osae.train.fit import fit\n"
        "fit(TrainConfig.from_dict(json.loads(sys.argv[1])), progress=False)\n"
    )
    cfg = TrainConfig(out=str(tmp_path / "cut"), **run).to_dict()
    args = [sys.executable, "-c", script, json.dumps(cfg)]
    killed = subprocess.run(args, env={**os.environ, "OSAE_KILL_AT": "fit-checkpoint:1"}, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    fit(TrainConfig(out=str(tmp_path / "cut"), **run), progress=False)

    def last(name):
        return json.loads((tmp_path / name / "topk-K16-k2-s0" / "metrics.jsonl").read_text().splitlines()[-1])

    assert last("whole")["nonfinite_skipped"] >= 2
    assert last("cut")["nonfinite_skipped"] == last("whole")["nonfinite_skipped"]
