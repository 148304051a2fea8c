"""No run directory is ever stranded: the same command resumes or restarts it, whatever stopped it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from osae.errors import StoreError
from osae.train.config import SAESpec
from osae.train.fit import fit
from tests.train.test_trainer import _cfg, _weights, toy  # noqa: F401  (toy: the shared store fixture)

SPECS = [SAESpec("topk", 0, {"d_sae": 32, "k": 3}, lr=1e-3), SAESpec("batchtopk", 1, {"d_sae": 32, "k": 3}, lr=1e-3)]


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        for key in wa[name]:
            assert torch.equal(wa[name][key], wb[name][key]), (name, key)


def _fit_cli(toy_store, out, *extra, env=None, wait=True):  # noqa: F811
    args = [
        sys.executable,
        "-m",
        "osae",
        "fit",
        "--store",
        str(toy_store),
        "--arch",
        "topk",
        "--dict-size",
        "32",
        "--k",
        "3",
        "--seeds",
        "0,1",
        "--tokens",
        str(256 * 400),
        "--batch-size",
        "256",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "100000",
        "--out",
        str(out),
        *extra,
    ]
    run = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    if wait:
        out_, err = run.communicate(timeout=300)
        return run.returncode, out_, err
    return run


def test_a_run_killed_before_its_first_checkpoint_restarts_with_the_same_command(toy, tmp_path):  # noqa: F811
    ref = tmp_path / "ref"
    code, _, err = _fit_cli(toy, ref)
    assert code == 0, err
    cut = tmp_path / "cut"
    code, _, _ = _fit_cli(toy, cut, env={"OSAE_KILL_AT": "fit-step:30"})
    assert code == -signal.SIGKILL and (cut / "run.json").exists() and not (cut / "run_state.json").exists()
    code, _, err = _fit_cli(toy, cut)
    assert code == 0, err
    assert "no checkpoint yet: starting it again" in err
    _same_weights(ref, cut)
    lines = (cut / "topk-K32-k3-s0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == list(range(50, 401, 50))  # no lines of the killed attempt


def test_sigint_and_sigterm_checkpoint_and_the_same_command_resumes_bitwise(toy, tmp_path):  # noqa: F811
    ref = tmp_path / "ref"
    assert _fit_cli(toy, ref)[0] == 0
    cut = tmp_path / "cut"
    for signum in (signal.SIGINT, signal.SIGTERM):
        metrics = cut / "topk-K32-k3-s0" / "metrics.jsonl"
        before = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        proc = _fit_cli(toy, cut, wait=False)
        deadline = time.time() + 120  # signal once training is under way (a new metrics line)
        while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) > before):
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            pytest.skip("the run finished before the signal arrived (machine too fast for this run length)")
        assert proc.returncode == 128 + signum, err
        assert "interrupted at step" in err and "run the same command again to resume" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 3
        state = json.loads((cut / "run_state.json").read_text())
        assert 0 < state["step"] < 400 and not state["finished"]
    code, _, err = _fit_cli(toy, cut)
    assert code == 0, err
    _same_weights(ref, cut)


def test_a_resumed_run_keeps_the_values_it_derived_when_it_started(toy, tmp_path):  # noqa: F811
    """A run started by an osae whose rules derived other values than today's (here: warm-up 7 steps, dead
    window 512 tokens, recorded as derived while the settings say "auto") resumes with its own values:
    its weights equal those of an uninterrupted run given them explicitly."""
    pinned = ("--lr-warmup-steps", "7", "--dead-window-tokens", "512")
    ref = tmp_path / "ref"
    assert _fit_cli(toy, ref, *pinned)[0] == 0
    cut = tmp_path / "cut"
    code, _, _ = _fit_cli(toy, cut, *pinned, "--checkpoint-every", "100", env={"OSAE_KILL_AT": "fit-step:150"})
    assert code == -signal.SIGKILL and json.loads((cut / "run_state.json").read_text())["step"] == 100
    record = json.loads((cut / "run.json").read_text())
    assert record["resolved"]["lr_warmup_steps"] == 7
    assert {v["dead_window_tokens"] for v in record["resolved"]["saes"].values()} == {512}
    del record["resolved"]["autocast"]  # as an osae before session 19 wrote it: that value takes today's, silently
    (cut / "run.json").write_text(json.dumps({**record, "lr_warmup_steps": None, "dead_window_tokens": None}))
    code, _, err = _fit_cli(toy, cut, "--checkpoint-every", "100")  # today's command: both left out
    assert code == 0, err
    assert "derived other values than this one (" in err and "lr_warmup_steps: 7 -> 200" in err
    assert "topk-K32-k3-s0 dead_window_tokens: 512 -> " in err and "the run keeps its own" in err
    assert "autocast: " not in err  # no difference reported for a value the record lacks
    _same_weights(ref, cut)


def test_a_run_resumed_on_a_cpu_where_auto_means_fp32_keeps_the_bf16_it_started_in(toy, tmp_path):  # noqa: F811
    """`--autocast auto` picks bf16 on some CPUs only. A run that started in bf16 (recorded in run.json's
    "resolved") and resumes where auto means fp32 stays in bf16: its weights equal an uninterrupted bf16 run's."""
    ref = tmp_path / "ref"
    assert _fit_cli(toy, ref, "--autocast", "bf16")[0] == 0
    cut = tmp_path / "cut"
    code, _, _ = _fit_cli(
        toy, cut, "--autocast", "bf16", "--checkpoint-every", "100", env={"OSAE_KILL_AT": "fit-step:150"}
    )
    assert code == -signal.SIGKILL
    record = json.loads((cut / "run.json").read_text())
    assert record["resolved"]["autocast"] == "bf16"
    (cut / "run.json").write_text(json.dumps({**record, "autocast": "auto"}))  # as if auto had chosen bf16
    code, _, err = _fit_cli(toy, cut, "--checkpoint-every", "100")  # auto: fp32 for this small SAE anywhere
    assert code == 0, err
    assert "autocast: 'bf16' -> 'none'" in err and "the run keeps its own" in err
    _same_weights(ref, cut)


def test_a_checkpoint_the_file_system_refuses_is_one_line_and_the_run_resumes_after(toy, tmp_path):  # noqa: F811
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert _fit_cli(toy, ref)[0] == 0
    code, _, _ = _fit_cli(toy, cut, "--checkpoint-every", "100", env={"OSAE_KILL_AT": "fit-step:150"})
    assert code == -signal.SIGKILL
    blocker = cut / "topk-K32-k3-s0" / "sae.safetensors.tmp"
    blocker.mkdir()  # where the next checkpoint writes its weights: the write fails with EISDIR
    code, _, err = _fit_cli(toy, cut, "--checkpoint-every", "100")
    lines = [line for line in err.splitlines() if line.startswith("osae: error:")]
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    assert "could not write the checkpoint of step 200" in lines[0] and "run the same command again" in lines[0]
    assert json.loads((cut / "run_state.json").read_text())["step"] == 100
    blocker.rmdir()
    code, _, err = _fit_cli(toy, cut, "--checkpoint-every", "100")
    assert code == 0, err
    _same_weights(ref, cut)


def test_a_changed_command_is_refused_and_overwrite_starts_afresh(toy, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    fit(_cfg(toy, out, SPECS, tokens=256 * 12), progress=False)
    (out / "notes.txt").write_text("mine")
    other = [SAESpec("topk", 5, {"d_sae": 16, "k": 2}, lr=1e-3)]
    with pytest.raises(ValueError, match="holds a run with other settings"):
        fit(_cfg(toy, out, other, tokens=256 * 12), progress=False)
    assert (out / "batchtopk-K32-k3-s1").exists()  # refused: nothing touched
    fit(_cfg(toy, out, other, tokens=256 * 12), overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["topk-K16-k2-s5"]
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are removed
    assert load_file(str(out / "topk-K16-k2-s5" / "sae.safetensors"))["W_dec"].shape == (16, 16)


def test_a_directory_that_is_not_a_run_is_left_alone(toy, tmp_path):  # noqa: F811
    out = tmp_path / "busy"
    out.mkdir()
    (out / "data.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="holds files but no osae run"):
        fit(_cfg(toy, out, SPECS), progress=False)
    assert [p.name for p in out.iterdir()] == ["data.bin"]


def test_an_invalid_sae_setting_writes_nothing(toy, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="k must be in"):
        fit(_cfg(toy, tmp_path / "bad", [SAESpec("topk", 0, {"d_sae": 8, "k": 9})]), progress=False)
    with pytest.raises(StoreError, match="no hook 'nope'"):
        fit(_cfg(toy, tmp_path / "bad", SPECS, hook="nope"), progress=False)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--lr-warmup-steps", "5000"], "--lr-warmup-steps"),
        (["--dead-window-tokens", str(10**9)], "--dead-window-tokens"),
        (["--arch", "batchtopk", "--threshold-start", "5000"], "--threshold-start"),
    ],
)
def test_a_step_setting_longer_than_the_run_is_one_line_and_writes_nothing(toy, tmp_path, extra, option):  # noqa: F811
    code, _, err = _fit_cli(toy, tmp_path / "run", *extra)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, err
    assert option in lines[0] and "400" in lines[0], lines[0]  # names the option and the run's 400 steps
    assert not (tmp_path / "run").exists()


def test_defaults_scale_with_the_run_and_run_json_records_them(toy, tmp_path):  # noqa: F811
    specs = [SAESpec("batchtopk", 0, {"d_sae": 32, "k": 3}, lr=1e-3), SAESpec("relu", 0, {"d_sae": 32})]
    cfg = _cfg(toy, tmp_path / "run", specs, lr_warmup_steps=None, dead_window_tokens=None)
    fit(cfg, progress=False)
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    steps = cfg.tokens // cfg.batch_size
    assert saved["lr_warmup_steps"] is None and saved["dead_window_tokens"] is None  # the settings: "auto"
    res = saved["resolved"]
    assert res["steps"] == steps and res["lr_warmup_steps"] == max(1, round(0.5 * steps)) < steps
    # per SAE: a fortieth of the run, but at least 200 firings of an average latent (none for ReLU)
    btk, relu = res["saes"]["batchtopk-K32-k3-s0"], res["saes"]["relu-K32-kNA-s0"]
    assert btk["dead_window_tokens"] == min(cfg.tokens, max(cfg.tokens // 40, 200 * 32 // 3))
    assert relu["dead_window_tokens"] == max(cfg.batch_size, cfg.tokens // 40)
    assert res["saes"]["batchtopk-K32-k3-s0"]["threshold_start"] == max(1, round(0.1 * steps))
    assert res["saes"]["batchtopk-K32-k3-s0"]["threshold_window"] == max(1, round(0.1 * steps))
    assert res["saes"]["relu-K32-kNA-s0"]["l1_warmup_steps"] == max(1, round(0.05 * steps))
    frozen = json.loads((tmp_path / "run" / "batchtopk-K32-k3-s0" / "config.json").read_text())
    assert frozen["arch_config"]["threshold_start"] == res["saes"]["batchtopk-K32-k3-s0"]["threshold_start"]
    long_run = SAESpec("batchtopk", 0, {"d_sae": 32}).build_config(16, n_steps=10**6)
    assert long_run.threshold_start == long_run.threshold_window == 1000  # capped: the published beta 0.999
