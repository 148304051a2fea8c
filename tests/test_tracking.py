"""--log-to: a real TensorBoard event file read back, and a real wandb run in offline mode."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.test_progress import TOY


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("tracking") / "toy.zarr"
    subprocess.run([sys.executable, "-m", "osae", *TOY, "--out", str(path)], check=True, capture_output=True)
    return path


def _osae(*args, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "osae", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


FIT = ["--arch", "topk", "--dict-size", "32", "--k", "3", "--seeds", "0,1", "--tokens", "25600", "--batch-size", "256"]


def _events(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_fit_and_evaluate_write_tensorboard_events_that_read_back(toy_store, tmp_path):
    run = tmp_path / "run"
    _osae("fit", "--store", toy_store, *FIT, "--out", run, "--log-to", "tensorboard")
    acc = _events(run / "tensorboard")
    for name in ("topk-K32-k3-s0", "topk-K32-k3-s1"):
        fvu = acc.Scalars(f"{name}/fvu")
        assert [e.step for e in fvu] == [50, 100]  # every log_every (50) steps
        logged = [json.loads(l) for l in (run / name / "metrics.jsonl").read_text().splitlines()]
        assert [e.value for e in fvu] == pytest.approx([m["fvu"] for m in logged], rel=1e-6)
        assert {f"{name}/{k}" for k in ("l0", "dead_fraction", "lr", "loss")} <= set(acc.Tags()["scalars"])
    report = tmp_path / "report"
    _osae("evaluate", run, "--store", toy_store, "--out", report, "--log-to", "tensorboard")
    acc = _events(report / "tensorboard")
    metrics = json.loads((report / "metrics.json").read_text())
    assert acc.Scalars("evaluate/saes/topk-K32-k3-s0/fvu")[0].value == pytest.approx(
        metrics["saes"]["topk-K32-k3-s0"]["fvu"], rel=1e-6
    )
    assert "evaluate/pairs/text_summary" in acc.Tags()["tensors"] or "evaluate/pairs" in str(acc.Tags())


def test_fit_logs_to_wandb_offline_and_a_resumed_run_continues_it(toy_store, tmp_path):
    run = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = [sys.executable, "-m", "osae", "fit", "--store", str(toy_store), *FIT, "--checkpoint-every", "40"]
    args += ["--out", str(run), "--log-to", "wandb"]
    killed = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env={**os.environ, **env, "OSAE_KILL_AT": "fit-checkpoint:1"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_id = (run / "wandb_id").read_text().strip()
    _osae(*args[3:], env=env)  # the same command resumes the run, and its wandb run
    assert (run / "wandb_id").read_text().strip() == run_id
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(d.name.endswith(run_id) for d in offline)
    # The resumed process logged its metrics lines into the run (the killed one's are lost with it).
    records = (offline[-1] / f"run-{run_id}.wandb").read_bytes()
    assert records.count(b"topk-K32-k3-s0/fvu") >= 2 and b"topk-K32-k3-s1/dead_fraction" in records
    # Without the package, or with an unknown tracker, the command says so in one line before any work.
    bad = subprocess.run(
        [sys.executable, "-m", "osae", "fit", "--store", str(toy_store), *FIT, "--out", str(tmp_path / "x")]
        + ["--log-to", "mlflow"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        bad.returncode == 1
        and bad.stderr.strip() == "osae: error: --log-to must be one of wandb, tensorboard; got 'mlflow'"
    )
    assert not (tmp_path / "x").exists()
