"""The command line as users and scripts see it: real `osae` processes, exit codes, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.store.helpers import HOOK, make_store

OSAE = [sys.executable, "-m", "osae.cli"]


def run(*args, ok=True):
    proc = subprocess.run(
        [*OSAE, *map(str, args)], capture_output=True, text=True, timeout=300, env={**os.environ, "OSAE_DEBUG": ""}
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc, pattern):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("osae: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "toy.zarr"
    run("toy", "--out", path, "--n", "20000", "--n-eval", "2000")
    return path


def test_help_works_for_every_command():
    for args in ([], ["store"], ["store", "info"], ["store", "verify"], ["store", "copy"], ["toy"]):
        proc = run(*args, "--help")
        assert "Usage" in proc.stdout


def test_info_json_has_the_contract_keys(toy):
    info = json.loads(run("store", "info", toy, "--json").stdout)
    for key in (
        "format_version",
        "n_tokens",
        "complete",
        "hooks",
        "model",
        "dataset",
        "context_size",
        "nbytes",
        "nbytes_stored",
        "fingerprint",
    ):
        assert key in info
    assert info["n_tokens"] == 22000 and info["complete"] is True
    assert info["hooks"]["toy"] == {"layer": None, "hook": "synthetic", "d_model": 80, "dtype": "float32"}
    assert info["ground_truth"]["arrays"] == ["code_indices", "code_values", "dictionary", "prior"]
    assert info["split"]["eval_tokens"] == 2000 and info["split"]["train_tokens"] == 20000
    assert len(info["fingerprint"]) == 32


def test_verify_passes_then_fails_on_a_corrupt_chunk(tmp_path):
    make_store(tmp_path / "s.zarr", n_seqs=100)
    report = json.loads(run("store", "verify", tmp_path / "s.zarr", "--json").stdout)
    assert report["ok"] and report["checked_chunks"] > 0 and report["bad_chunks"] == []
    shard = tmp_path / "s.zarr" / "acts" / HOOK / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[200] ^= 0x55
    shard.write_bytes(bytes(raw))
    proc = run("store", "verify", tmp_path / "s.zarr", "--json", ok=False)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert not report["ok"] and report["bad_chunks"][0]["chunk"] == 0


def test_copy_recompresses_and_keeps_the_fingerprint(toy, tmp_path):
    proc = run("store", "copy", toy, tmp_path / "z.zarr", "--compressor", "zstd", "--json")
    report = json.loads(proc.stdout)
    assert report["ok"] and report["same_content"]
    proc = run("store", "copy", toy, tmp_path / "z.zarr", ok=False)
    assert_one_line_error(proc, "already exists")


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["store", "info", "/definitely/not/here.zarr"], "does not exist"),
        (["store", "verify", "{tmp}"], "not an osae store"),
        (["store", "copy", "{toy}", "{tmp}/x.zarr", "--compressor", "brotli"], "--compressor must be one of"),
        (["toy", "--out", "{tmp}/t.zarr", "--m", "200"], "m must be in [1, n_atoms=100]"),
        (["toy", "--out", "{tmp}/t.zarr", "--n", "0"], "n must be positive"),
    ],
)
def test_bad_input_gets_one_clear_line(args, pattern, toy, tmp_path):
    args = [a.format(tmp=tmp_path, toy=toy) for a in args]
    assert_one_line_error(run(*args, ok=False), pattern)


def test_another_format_version_is_refused(tmp_path):
    make_store(tmp_path / "s.zarr", n_seqs=5)
    meta_path = Path(tmp_path / "s.zarr" / "zarr.json")
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["osae"]["format_version"] = 2
    meta_path.write_text(json.dumps(meta))
    assert_one_line_error(run("store", "info", tmp_path / "s.zarr", ok=False), "format version 2")


FIT_SMALL = ["--tokens", 1024, "--batch-size", 128, "--lr-warmup-steps", 1, "--checkpoint-every", 4, "--device", "cpu"]


def test_fit_dry_run_prints_the_resolved_config_and_writes_nothing(toy, tmp_path):
    out = tmp_path / "run"
    proc = run(
        "fit",
        "--store",
        toy,
        "--out",
        out,
        "--arch",
        "osae",
        "--dict-size",
        32,
        "--k",
        3,
        "--seeds",
        "0,1",
        "--prefix-law",
        "zipf",
        "--k-init",
        8,
        *FIT_SMALL,
        "--dry-run",
    )
    cfg = json.loads(proc.stdout)
    assert not out.exists()
    assert [s["seed"] for s in cfg["saes"]] == [0, 1] and cfg["tokens"] == 1024
    assert cfg["saes"][0]["config"]["prefix_law"] == "zipf" and cfg["saes"][0]["config"]["prefix_alpha"] == 1.2
    assert "osae-K32-k3-s0" in proc.stderr and "d_in=80" in proc.stderr


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--arch", "topk", "--prefix-law", "zipf"], "--prefix-law is a setting of osae, not of topk"),
        (["--arch", "topk", "--dict-size", 8, "--k", 9], "k=9 is larger than the dictionary size 8"),
        (["--arch", "matryoshka", "--dict-size", 64, "--widths", "8,x"], "--widths takes comma-separated ints"),
        (["--hook", "nope"], "nope"),
    ],
)
def test_a_bad_fit_setting_is_one_line_and_creates_no_run_directory(toy, tmp_path, args, pattern):
    for extra in ([], ["--dry-run"]):
        proc = run("fit", "--store", toy, "--out", tmp_path / "run", *args, *FIT_SMALL, *extra, ok=False)
        assert_one_line_error(proc, pattern)
        assert not (tmp_path / "run").exists()


def test_fit_config_of_a_run_json_reproduces_the_run(toy, tmp_path):
    run("fit", "--store", toy, "--out", tmp_path / "a", "--arch", "topk", "--dict-size", 32, "--k", 3, *FIT_SMALL)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads((tmp_path / "a" / "run.json").read_text()), "tokenz": 1}))
    assert_one_line_error(
        run("fit", "--config", bad, "--out", tmp_path / "x", ok=False), "unknown run setting 'tokenz'"
    )
    run("fit", "--config", tmp_path / "a" / "run.json", "--out", tmp_path / "b")
    a, b = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("a", "b"))
    assert {**a, "out": None} == {**b, "out": None}
    weights = [(tmp_path / d / "topk-K32-k3-s0" / "sae.safetensors").read_bytes() for d in ("a", "b")]
    assert weights[0] == weights[1]
    # Options typed on the command line replace the file's values, settings in every SAE that has them.
    over = json.loads(
        run(
            "fit",
            "--config",
            tmp_path / "a" / "run.json",
            "--out",
            tmp_path / "c",
            "--k",
            4,
            "--tokens",
            2048,
            "--seeds",
            "5,6",
            "--dry-run",
        ).stdout
    )
    assert over["tokens"] == 2048 and over["batch_size"] == 128
    assert [(s["seed"], s["config"]["k"]) for s in over["saes"]] == [(5, 4), (6, 4)]
    proc = run("fit", "--config", tmp_path / "a" / "run.json", "--out", tmp_path / "c", "--l1-coef", 1, ok=False)
    assert_one_line_error(proc, "--l1-coef is a setting of relu, hybridorder, not of topk")


def test_harvest_config_and_dry_run(tmp_path):
    proc = run("harvest", "--out", tmp_path / "h.zarr", "--layer", 1, "--layer", 2, "--tokens", 5000, "--dry-run")
    cfg = json.loads(proc.stdout)
    assert cfg["layers"] == [1, 2] and cfg["tokens"] == 5000 and not (tmp_path / "h.zarr").exists()
    (tmp_path / "h.yaml").write_text(f"out: {tmp_path / 'y.zarr'}\nlayers: [2]\ninclude_bos: true\n")
    cfg = json.loads(run("harvest", "--config", tmp_path / "h.yaml", "--tokens", 300, "--dry-run").stdout)
    assert cfg["layers"] == [2] and cfg["include_bos"] is True and cfg["tokens"] == 300
    (tmp_path / "bad.json").write_text(json.dumps({"out": "x.zarr", "layer": [1]}))
    assert_one_line_error(
        run("harvest", "--config", tmp_path / "bad.json", "--dry-run", ok=False), "unknown harvest setting 'layer'"
    )
