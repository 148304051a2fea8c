"""The Python API (osae.api, docs/python.md) on a real toy store and real tiny fits: a loaded SAE works in the
store's units (the FVU of decode(encode(x)) on raw rows is what `osae evaluate --json` reports), every format
loads through it, and `evaluate_checkpoints` returns exactly the CLI's JSON."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import osae
from osae.errors import MissingInputError, OsaeError, UsageError
from osae.store import Normalizer, load_rows
from osae.train.config import SAESpec
from osae.train.export import export

from .evaluate.helpers import fitted_toy_run

NAMES = ("osae-K32-k3-s0", "osae-K32-k3-s1")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two seeds of one OSAE configuration, trained on scalar-normalised toy rows."""
    specs = [SAESpec("osae", s, {"d_sae": 32, "k": 3}, lr=3e-3) for s in (0, 1)]
    return fitted_toy_run(tmp_path_factory.mktemp("api"), specs, n=6000, tokens=256 * 20, normalization="scalar")


@pytest.fixture(scope="module")
def cli_json(run):
    proc = subprocess.run(
        [sys.executable, "-m", "osae", "evaluate", run / "run", "--store", run / "toy.zarr"]
        + ["--no-model", "--device", "cpu", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def rows(run):
    return load_rows(osae.open_store(run / "toy.zarr"), "toy", "eval")


def _fvu(x: torch.Tensor, recon: torch.Tensor) -> float:
    x, recon = x.double(), recon.double()
    return float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_decode_encode_on_raw_rows_gives_the_fvu_and_l0_evaluate_reports(run, cli_json, rows):
    for name in NAMES:
        sae = osae.load_sae(run / "run" / name)
        assert (sae.architecture, sae.d_in, sae.d_sae, sae.hook) == ("osae", 16, 32, "toy")
        assert sae.normalizer.kind == "scalar" and abs(sae.normalizer.scale - 1) > 0.2  # a scale that matters
        reported = cli_json["saes"][name]
        assert len(rows) == reported["n_tokens"] == 1000
        assert _fvu(rows, sae.decode(sae.encode(rows))) == pytest.approx(reported["fvu"], rel=1e-5)
        assert _fvu(rows, sae(rows)) == pytest.approx(reported["fvu"], rel=1e-6)
        assert float((sae.encode(rows) > 0).sum(1).double().mean()) == pytest.approx(reported["l0"], rel=1e-9)
        # the bare SAE on raw rows (the normalisation forgotten) is measurably worse: the test can fail
        with torch.no_grad():
            bare = sae.sae.decode(sae.sae.encode(rows))
        assert _fvu(rows, bare) > reported["fvu"] + 0.1


def test_evaluate_checkpoints_returns_what_evaluate_json_prints(run, cli_json, tmp_path):
    got = osae.evaluate_checkpoints(
        run / "run", store=run / "toy.zarr", use_model=False, device="cpu", progress=False, out=tmp_path / "rep"
    )
    assert set(got) == set(cli_json) == {"store", "saes", "pairs", "stitching", "notes"}
    assert set(got["saes"]) == set(NAMES) and len(got["pairs"]) == 1
    assert set(got["saes"][NAMES[0]]) == set(cli_json["saes"][NAMES[0]])
    assert got["pairs"][0]["stab"] == cli_json["pairs"][0]["stab"] and "32" in got["pairs"][0]["prefix"]
    assert json.dumps(got, sort_keys=True) == json.dumps(cli_json, sort_keys=True)  # every value, NaNs included
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["saes"].keys() == got["saes"].keys()
    one = osae.evaluate_checkpoints([str(run / "run" / NAMES[0])], osae.open_store(run / "toy.zarr"), use_model=False)
    assert list(one["saes"]) == [NAMES[0]] and one["saes"][NAMES[0]]["fvu"] == cli_json["saes"][NAMES[0]]["fvu"]


def test_encode_and_decode_take_any_leading_shape_dtype_and_code(run, rows):
    sae = osae.load_sae(run / "run" / NAMES[0])
    x = rows[:60]
    z = sae.encode(x)
    assert z.shape == (60, 32) and z.dtype == torch.float32 and bool(((z > 0).sum(1) <= 3).all())
    assert torch.equal(sae.encode(x.reshape(3, 20, 16)), z.reshape(3, 20, 32))
    assert sae(x.reshape(3, 20, 16)).shape == (3, 20, 16)
    code = sae.encode_sparse(x)
    assert torch.equal(code.dense(32), z) and int(code.l0().max()) <= 3
    torch.testing.assert_close(sae.decode(z), sae.decode(code), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), sae.decode(code))
    # a prefix of the dictionary: the same as zeroing the later latents of the dense code
    cut = z.clone()
    cut[:, 8:] = 0
    torch.testing.assert_close(sae.decode(z, upto=8), sae.decode(cut), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(sae.decode(z, upto=8), sae.decode(z))
    # fp16 / fp64 rows are converted to the SAE's dtype; float32 comes back
    assert sae(x.half()).dtype == torch.float32 and sae.encode(x.double()).dtype == torch.float32
    torch.testing.assert_close(sae(x.double()), sae(x))
    # frozen weights, but gradients reach the inputs (attribution, steering)
    assert not any(p.requires_grad for p in sae.parameters())
    xg = x.clone().requires_grad_(True)
    sae(xg).pow(2).sum().backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0


def test_a_standardized_checkpoint_reads_raw_rows_with_the_stores_mean_and_scale(tmp_path):
    root = fitted_toy_run(
        tmp_path, [SAESpec("topk", 0, {"d_sae": 32, "k": 3})], n=3000, tokens=256 * 4, normalization="standardize"
    )
    sae = osae.load_sae(root / "run" / "topk-K32-k3-s0")
    store = osae.open_store(root / "toy.zarr")
    norm = Normalizer.from_store(store, "toy", "standardize")  # from the store's statistics, not the checkpoint
    x = load_rows(store, "toy", "eval", max_tokens=200)
    mean, scale = (torch.tensor(v, dtype=torch.float32) for v in (norm.shift, norm.scale))
    assert mean.shape == scale.shape == (16,) and float(mean.abs().max()) > 0
    with torch.no_grad():
        code = sae.sae.encode((x - mean) * scale)
        want = sae.sae.decode(code) / scale + mean
    assert sae.normalizer.kind == "standardize"
    torch.testing.assert_close(sae.encode(x), code.dense(32), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), want, rtol=1e-5, atol=1e-5)


def _saelens_with_scaler(ckpt, out, scale: float):
    """The checkpoint's own (unfolded) weights in SAELens' layout, trained on activations scaled by `scale`
    (normalize_activations expected_average_only_in, the factor in activation_scaler.json)."""
    sae = osae.load_sae(ckpt).sae
    out.mkdir()
    weights = {"W_enc": sae.W_enc.T.contiguous(), "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    save_file({k: v.detach().clone() for k, v in weights.items()}, str(out / "sae_weights.safetensors"))
    cfg = {"architecture": "topk", "k": 3, "d_in": 16, "d_sae": 32, "normalize_activations": "expected_average_only_in"}
    (out / "cfg.json").write_text(json.dumps({**cfg, "metadata": {"hook_name": "toy"}}))
    (out / "activation_scaler.json").write_text(json.dumps({"scaling_factor": scale}))
    return out


def test_every_format_reconstructs_raw_rows_alike(run, rows, tmp_path):
    ckpt = run / "run" / NAMES[0]
    ours = osae.load_sae(ckpt)
    scale = float(ours.normalizer.scale)
    export(ckpt, tmp_path / "saelens", format="saelens")  # the scale folded into the weights
    export(ckpt, tmp_path / "sparsify" / "layers.0", format="sparsify")
    x = rows[:200]
    for path, fmt in ((tmp_path / "saelens", "saelens"), (tmp_path / "sparsify" / "layers.0", "sparsify")):
        theirs = osae.load_sae(path)
        assert theirs.config["format"] == fmt and theirs.normalizer.kind == "none"
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-4, atol=1e-5)
        # folded weights give codes in raw units: the osae codes divided by the scale
        torch.testing.assert_close(theirs.encode(x) * scale, ours.encode(x), rtol=1e-4, atol=1e-5)
    native = osae.load_sae(_saelens_with_scaler(ckpt, tmp_path / "native", scale), format="saelens")
    assert native.normalizer.kind == "scalar" and native.normalizer.scale == pytest.approx(scale)
    torch.testing.assert_close(native(x), ours(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(native.encode(x), ours.encode(x), rtol=1e-5, atol=1e-5)  # SAELens' own units
    with pytest.raises(UsageError, match="is not a sparsify checkpoint"):
        osae.load_sae(tmp_path / "saelens", format="sparsify")


def test_open_store_takes_paths_and_file_urls(run):
    path = run / "toy.zarr"
    for url in (path, str(path), f"file://{path}"):
        store = osae.open_store(url)
        assert store.n_tokens == 7000 and store.resolve_hook(None) == "toy"


def test_bad_input_is_one_clear_error(run, rows, tmp_path):
    sae = osae.load_sae(run / "run" / NAMES[0])
    cases = [
        (MissingInputError, "does not exist", lambda: osae.load_sae(tmp_path / "nowhere")),
        (UsageError, "no checkpoint osae reads", lambda: osae.load_sae(tmp_path)),
        (UsageError, r"\(5, 8\) do not end in d_in=16", lambda: sae.encode(torch.zeros(5, 8))),
        (UsageError, "as a torch tensor", lambda: sae(rows[:3].numpy())),
        (UsageError, r"\(5, 16\) do not end in d_sae=32", lambda: sae.decode(torch.zeros(5, 16))),
        (UsageError, r"upto must be in \[0, d_sae=32\]", lambda: sae.decode(sae.encode(rows[:2]), upto=33)),
        (OsaeError, "no store at", lambda: osae.open_store(tmp_path / "missing.zarr")),
        (UsageError, "has no option max_token; it takes", lambda: osae.evaluate_checkpoints(run, run, max_token=5)),
    ]
    for kind, text, call in cases:
        with pytest.raises(kind, match=text) as info:
            call()
        assert "\n" not in str(info.value), text


def test_import_osae_stays_free_of_torch_until_the_api_is_used():
    code = (
        "import sys, osae\n"
        "assert 'torch' not in sys.modules and 'zarr' not in sys.modules\n"
        "assert {'load_sae', 'open_store', 'evaluate_checkpoints', 'LoadedSAE'} <= set(dir(osae))\n"
        "osae.load_sae\n"
        "assert 'torch' in sys.modules\n"
        "import osae.evaluate.run\n"  # the subpackage osae.evaluate, which the API does not shadow
        "assert callable(osae.evaluate_checkpoints) and osae.evaluate.run.evaluate\n"
        "try:\n    osae.no_such_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no error')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
