import json
import subprocess
import sys

import pytest

from osae.store import StoreWriter, hook_spec
from osae.train.config import SAESpec

from .helpers import fitted_toy_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    specs = [SAESpec("osae", s, {"d_sae": 32, "k": 3}, lr=3e-3) for s in (0, 1)] + [
        SAESpec("osae", 0, {"d_sae": 64, "k": 3}, lr=3e-3)
    ]
    return fitted_toy_run(tmp_path_factory.mktemp("ev"), specs, n=8000, tokens=256 * 30, normalization="none")


def _osae(*args):
    return subprocess.run([sys.executable, "-m", "osae", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_evaluate_reports_every_sae_and_pair_with_ground_truth(run, tmp_path):
    proc = _osae("evaluate", run / "run", "--store", run / "toy.zarr", "--out", tmp_path / "rep", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["saes"]) == {"osae-K32-k3-s0", "osae-K32-k3-s1", "osae-K64-k3-s0"}
    assert len(result["pairs"]) == 1  # seeds of one configuration only
    st = result["stitching"]
    assert len(st) == 2 and st[0]["large"] == "osae-K64-k3-s0"
    assert abs(st[0]["novel_fraction"] + st[0]["reconstruction_fraction"] + st[0]["no_change_fraction"] - 1) < 1e-9
    m = result["saes"]["osae-K32-k3-s0"]
    for key in (
        "fvu",
        "mse",
        "cosine",
        "l0",
        "dead_fraction",
        "power_law_exponent",
        "power_law_r2",
        "stab_gt",
        "ord_gt",
    ):
        assert m[key] is not None, key
    assert m["ce_loss_recovered"] is None and "lm" in result["notes"]  # a synthetic store names no model
    # 1,000 held-out rows: said on stderr and in the report, not computed on silently
    assert "holds only 1,000 rows" in result["notes"]["eval_split"] and "holds only 1,000 rows" in proc.stderr
    assert result["pairs"][0]["stab_z"] is not None and -1 <= result["pairs"][0]["ord_z"] <= 1
    pair = result["pairs"][0]
    assert {"a", "b", "stab", "ord", "prefix"} <= set(pair) and "32" in pair["prefix"]
    assert (tmp_path / "rep" / "metrics.parquet").exists() and (tmp_path / "rep" / "metrics.csv").exists()
    for png in ("prefix_curves.png", "progressive.png", "power_law.png", "matching.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 5000, png
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "osae-K32-k3-s0 / osae-K32-k3-s1" in report and "![prefix_curves](prefix_curves.png)" in report
    # the dead column's detection floor is the number of held-out tokens actually scored
    assert f"never active on the {m['n_tokens']:,} held-out tokens" in report and m["n_tokens"] == 1000


def test_evaluate_refuses_a_store_of_another_width(run, tmp_path):
    w = StoreWriter.create(tmp_path / "other.zarr", hooks={"toy": hook_spec(None, 8, "float32")}, has_tokens=False)
    import numpy as np

    w.write({"toy": np.zeros((600, 8), np.float32)})
    w.close()
    proc = _osae("evaluate", run / "run", "--store", tmp_path / "other.zarr")
    assert proc.returncode == 1 and "d_in=8 but" in proc.stderr and "Traceback" not in proc.stderr
    proc = _osae("evaluate", tmp_path, "--store", run / "toy.zarr")
    assert proc.returncode == 1 and "neither a checkpoint" in proc.stderr
