"""`osae fit --sweep FILE` as users run it: a real `osae` process on a tiny toy store.

Asserted through the command line and the files it writes only (sweep parsing is being redesigned, #11).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STEPS, BATCH = 6, 128
SWEEP = [
    {"arch": "topk", "seeds": [0, 1], "d_sae": 32, "k": 3, "lr": 2e-3},
    {"arch": "osae", "seed": 5, "d_sae": 16, "k": 2, "lr": 1e-3, "prefix_law": "zipf", "prefix_alpha": 1.5},
    {"arch": "relu", "d_sae": 24, "l1_coef": 2.5},  # no lr: the default rule, no seed: seed 0
]


def osae(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "osae", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OSAE_DEBUG": ""},
    )


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "toy.zarr"
    made = osae("toy", "--out", path, "--d", 16, "--n-atoms", 32, "--m", 3, "--n", 4000, "--n-eval", 500)
    assert made.returncode == 0, made.stderr
    return path


def fit_sweep(toy: Path, sweep_file: Path, out: Path) -> subprocess.CompletedProcess:
    return osae(
        "fit",
        "--store",
        toy,
        "--sweep",
        sweep_file,
        "--out",
        out,
        "--tokens",
        STEPS * BATCH,
        "--batch-size",
        BATCH,
        "--lr-warmup-steps",
        1,
        "--checkpoint-every",
        3,
    )


def write_sweep(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess, *patterns: str) -> None:
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("WARNING", "INFO"))]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("osae: error:"), lines[0]
    for pattern in patterns:
        assert pattern in lines[0], lines[0]


def test_the_run_holds_exactly_the_saes_the_sweep_lists(toy, tmp_path):
    proc = fit_sweep(toy, write_sweep(tmp_path / "sweep.json", SWEEP), tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    trained = {d.name for d in run.iterdir() if d.is_dir()}
    assert trained == {"topk-K32-k3-s0", "topk-K32-k3-s1", "osae-K16-k2-s5", "relu-K24-kNA-s0"}
    configs = {name: json.loads((run / name / "config.json").read_text()) for name in trained}
    for name, c in configs.items():
        assert c["final"] and c["step"] == STEPS and c["tokens_seen"] == STEPS * BATCH, name
        assert (run / name / "sae.safetensors").exists()
    # Seeds, per-entry learning rates and settings, as the checkpoint records them.
    assert [configs[f"topk-K32-k3-s{s}"]["seed"] for s in (0, 1)] == [0, 1]
    assert all(configs[f"topk-K32-k3-s{s}"]["lr"] == pytest.approx(2e-3) for s in (0, 1))
    assert (
        configs["topk-K32-k3-s0"]["arch_config"]["d_sae"] == 32 and configs["topk-K32-k3-s0"]["arch_config"]["k"] == 3
    )
    ordered = configs["osae-K16-k2-s5"]
    assert ordered["architecture"] == "osae" and ordered["seed"] == 5 and ordered["lr"] == pytest.approx(1e-3)
    assert ordered["arch_config"]["prefix_law"] == "zipf" and ordered["arch_config"]["prefix_alpha"] == 1.5
    relu = configs["relu-K24-kNA-s0"]
    assert relu["seed"] == 0 and relu["arch_config"]["l1_coef"] == 2.5
    assert relu["lr"] == pytest.approx(6e-3 * (BATCH / 24) ** 0.87)  # the default optimizer's (adam-lazy) rule
    # Two seeds of one entry differ only in their seed: different initialisations, hence different weights.
    a = (run / "topk-K32-k3-s0" / "sae.safetensors").read_bytes()
    assert a != (run / "topk-K32-k3-s1" / "sae.safetensors").read_bytes()


@pytest.mark.parametrize(
    "content, pattern, names_file",
    [
        ([{"seeds": [0], "d_sae": 32, "k": 3}], "'arch'", True),
        ({"arch": "topk", "d_sae": 32}, "JSON list", True),
        ('[{"arch": "topk", "d_sae": 32,]', "not valid JSON", True),
        ([{"arch": "no-such-arch", "d_sae": 32}], "unknown architecture 'no-such-arch'", False),
    ],
    ids=["missing-arch", "not-a-list", "bad-json", "unknown-arch"],
)
def test_a_bad_sweep_file_is_one_line_and_exit_1(toy, tmp_path, content, pattern, names_file):
    sweep_file = write_sweep(tmp_path / "sweep.json", content)
    proc = fit_sweep(toy, sweep_file, tmp_path / "run")
    assert_one_line_error(proc, pattern, *([str(sweep_file)] if names_file else []))
    assert not any(d.is_dir() for d in (tmp_path / "run").glob("*")), "no SAE was trained"


def test_a_missing_sweep_file_is_one_line(toy, tmp_path):
    proc = fit_sweep(toy, tmp_path / "nowhere.json", tmp_path / "run")
    assert_one_line_error(proc, "no sweep file", "nowhere.json")


def test_a_misspelt_setting_is_one_line_naming_it(toy, tmp_path):
    sweep_file = write_sweep(tmp_path / "sweep.json", [{"arch": "topk", "d_sae": 32, "kk": 3}])
    proc = fit_sweep(toy, sweep_file, tmp_path / "run")
    assert_one_line_error(proc, "kk")
