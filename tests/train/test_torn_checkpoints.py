"""Torn checkpoints, as a crash, a kill or a full disk leaves them, loaded through the public paths
(`osae evaluate`, `load_frozen`, `fit(resume=...)`): one clear error line, or a clean resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from osae.errors import CheckpointError
from osae.train.checkpoint import load_frozen
from osae.train.fit import fit

SMALL = [
    "--arch",
    "topk",
    "--dict-size",
    32,
    "--k",
    3,
    "--seeds",
    "0,1",
    "--tokens",
    128 * 6,
    "--batch-size",
    128,
    "--lr-warmup-steps",
    1,
]
# Big enough per step (K = 4096 on d = 80) that a run is still going when the test kills it.
KILLED = [
    "--arch",
    "topk",
    "--dict-size",
    4096,
    "--k",
    8,
    "--seeds",
    "0,1",
    "--tokens",
    1024 * 80,
    "--batch-size",
    1024,
    "--lr-warmup-steps",
    2,
    "--checkpoint-every",
    5,
]


def osae(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "osae", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OSAE_DEBUG": ""},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *patterns: str) -> None:
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("WARNING", "INFO"))]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for pattern in patterns:
        assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("torn") / "toy.zarr"
    made = osae("toy", "--out", path, "--n", 20000, "--n-eval", 1000)
    assert made.returncode == 0, made.stderr
    return path


@pytest.fixture(scope="module")
def finished(toy):
    run = toy.parent / "run"
    proc = osae("fit", "--store", toy, "--out", run, *SMALL)
    assert proc.returncode == 0, proc.stderr
    return run


@pytest.fixture
def ckpt(finished, tmp_path):
    """A private copy of one frozen checkpoint, to tear."""
    return Path(shutil.copytree(finished / "topk-K32-k3-s0", tmp_path / "topk-K32-k3-s0"))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def edit_config(ckpt: Path, **changes) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (ckpt / "config.json").write_text(json.dumps(config))


# -- frozen checkpoints ----------------------------------------------------------------------------
def test_the_intact_copy_loads(ckpt):
    sae, config = load_frozen(ckpt)
    assert config["architecture"] == "topk" and sae.cfg.d_sae == 32


def test_truncated_weights_are_caught_by_their_sha256(ckpt, toy):
    truncate(ckpt / "sae.safetensors")
    with pytest.raises(CheckpointError, match="does not match its config.json"):
        load_frozen(ckpt)
    assert_one_line_error(osae("evaluate", ckpt, "--store", toy), "does not match", str(ckpt))


def test_truncated_weights_without_a_recorded_sha256_are_one_clear_error(ckpt, toy):
    edit_config(ckpt, weights_sha256=None)  # as a hand-edited or foreign config would have it
    truncate(ckpt / "sae.safetensors")
    with pytest.raises(CheckpointError, match="sae.safetensors"):
        load_frozen(ckpt)
    assert_one_line_error(osae("evaluate", ckpt, "--store", toy), "sae.safetensors", str(ckpt))


def test_weights_from_another_checkpoint_do_not_match_the_config(ckpt, finished, toy):
    # A whole, valid weights file, but not the one this config was written with (a torn pair of renames).
    shutil.copy(finished / "topk-K32-k3-s1" / "sae.safetensors", ckpt / "sae.safetensors")
    with pytest.raises(CheckpointError, match="interrupted write"):
        load_frozen(ckpt)
    edit_config(ckpt, weights_sha256="0" * 64)
    assert_one_line_error(osae("evaluate", ckpt, "--store", toy), "does not match")


def test_a_missing_config_is_not_a_checkpoint(ckpt, toy):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="not an osae checkpoint"):
        load_frozen(ckpt)
    assert_one_line_error(osae("evaluate", ckpt, "--store", toy), "neither a checkpoint")


def test_a_truncated_config_is_one_clear_error(ckpt, toy):
    truncate(ckpt / "config.json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_frozen(ckpt)
    assert_one_line_error(osae("evaluate", ckpt, "--store", toy), "not valid JSON")


def test_one_torn_checkpoint_in_a_run_directory_is_named(finished, tmp_path, toy):
    run = Path(shutil.copytree(finished, tmp_path / "run"))
    truncate(run / "topk-K32-k3-s1" / "sae.safetensors", keep=0.9)
    assert_one_line_error(osae("evaluate", run, "--store", toy), "topk-K32-k3-s1")


# -- training states -------------------------------------------------------------------------------
def generations(sae_dir: Path) -> list[str]:
    return sorted(p.name for p in (sae_dir / "state").iterdir())


@pytest.fixture(scope="module")
def killed(toy):
    """A run killed mid-way (after at least one checkpoint) and the same run left to finish."""
    ref = toy.parent / "ref"
    assert osae("fit", "--store", toy, "--out", ref, *KILLED).returncode == 0
    cut = toy.parent / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "osae", "fit", "--store", str(toy), "--out", str(cut), *map(str, KILLED)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state_file, deadline = cut / "run_state.json", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state_file.read_text())["step"] >= 5:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(state_file.read_text())
    assert not state["finished"], "the run finished before it could be killed; make KILLED longer"
    return {"ref": ref, "cut": cut, "step": state["step"]}


@pytest.fixture
def cut(killed, tmp_path):
    return Path(shutil.copytree(killed["cut"], tmp_path / "cut")), killed["step"]


@pytest.mark.slow  # a killed run and its uninterrupted twin (the module fixture `killed`)
def test_a_stale_newer_generation_is_ignored_and_removed_on_resume(cut, killed):
    run, step = cut
    named = f"g{step:012d}"
    stale = f"g{step + 5:012d}"
    a, b = run / "topk-K4096-k8-s0", run / "topk-K4096-k8-s1"
    # SAE 0: the kill hit while its next generation was being written (tensors half there, no meta.json).
    (a / "state" / stale).mkdir(exist_ok=True)
    (a / "state" / stale / "tensors.safetensors").write_bytes(
        (a / "state" / named / "tensors.safetensors").read_bytes()[:1000]
    )
    # SAE 1: a complete-looking newer generation with other weights, which run_state.json never named.
    shutil.copytree(b / "state" / named, b / "state" / stale, dirs_exist_ok=True)
    shutil.copy(a / "state" / named / "tensors.safetensors", b / "state" / stale / "tensors.safetensors")

    summary = fit(resume=str(run), progress=False)
    assert summary["out"] == str(run)
    for name in (a.name, b.name):
        assert generations(run / name) == ["g000000000080"], name  # only the final one is left
        want = load_file(str(killed["ref"] / name / "sae.safetensors"))
        got = load_file(str(run / name / "sae.safetensors"))
        assert want.keys() == got.keys() and all((want[k] == got[k]).all() for k in want), name


@pytest.mark.slow
def test_a_named_generation_without_its_meta_cannot_be_resumed(cut):
    run, step = cut
    (run / "topk-K4096-k8-s1" / "state" / f"g{step:012d}" / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="no training state for step"):
        fit(resume=str(run), progress=False)
    assert_one_line_error(osae("fit", "--resume", run), "no training state", "topk-K4096-k8-s1")


@pytest.mark.slow
def test_a_named_generation_with_truncated_tensors_is_one_clear_error(cut):
    run, step = cut
    truncate(run / "topk-K4096-k8-s0" / "state" / f"g{step:012d}" / "tensors.safetensors")
    with pytest.raises(CheckpointError, match="tensors.safetensors"):
        fit(resume=str(run), progress=False)
    assert_one_line_error(osae("fit", "--resume", run), "tensors.safetensors", "topk-K4096-k8-s0")
