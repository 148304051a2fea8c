"""Checkpoints of SAELens, sparsify and dictionary_learning, written here in each library's saved layout with
random weights, read by osae.foreign: codes and reconstructions equal each library's own encode/decode,
written out below from its source (the libraries are not test dependencies)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from osae.errors import CheckpointError, UsageError
from osae.foreign import detect_format, load_any
from osae.store import ActivationStore
from osae.synthetic import ToyConfig, write_toy_store
from osae.train.config import SAESpec
from osae.train.export import export

from .helpers import fitted_toy_run

D, F, K = 8, 24, 3
HOOK = "blocks.2.hook_resid_post"


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _x(n=50, d=D):
    return _rand(n, d, seed=99) * 2


def _codes(sae, x):
    with torch.no_grad():
        code = sae.encode(x)
        return code.dense(sae.cfg.d_sae), sae.decode(code)


def _topk_dense(pre, k):
    vals, idx = torch.topk(pre, k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def store8(tmp_path_factory):
    """A small store of width D (what the refusal tests point --store at: the checkpoint is refused first)."""
    path = tmp_path_factory.mktemp("s8") / "toy.zarr"
    write_toy_store(path, ToyConfig(d=D, n_atoms=16, m=2, n=3000, n_eval=500))
    return path


def _osae(*args):
    return subprocess.run([sys.executable, "-m", "osae", *map(str, args)], capture_output=True, text=True, timeout=300)


# -- SAELens -------------------------------------------------------------------------------------
def _saelens(tmp, arch, extra_cfg=None, extra_w=None, dec_scale=None, version="6.12.0"):
    W_dec = _rand(F, D, seed=2)
    if dec_scale is not None:
        W_dec = W_dec * dec_scale[:, None]
    w = {"W_enc": _rand(D, F, seed=1), "b_enc": _rand(F, seed=3) * 0.3, "W_dec": W_dec, "b_dec": _rand(D, seed=4)}
    w.update(extra_w or {})
    cfg = {
        "architecture": arch,
        "d_in": D,
        "d_sae": F,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"hook_name": HOOK, "model_name": "gpt2", "sae_lens_version": version},
        **(extra_cfg or {}),
    }
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(w, str(tmp / "sae_weights.safetensors"))
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    return w


def test_saelens_standard_is_relu_of_the_centred_input(tmp_path):
    w = _saelens(tmp_path, "standard")
    sae, cfg = load_any(tmp_path)
    x = _x()
    z_ref = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])  # StandardSAE.encode
    z, recon = _codes(sae, x)
    _close(z, z_ref)
    _close(recon, z_ref @ w["W_dec"] + w["b_dec"])
    assert (cfg["format"], cfg["architecture"], cfg["hook"], cfg["hook_info"]["layer"]) == ("saelens", "relu", HOOK, 2)
    assert cfg["normalization"] == {"kind": "none"} and (z_ref > 0).sum() > 0


def test_saelens_topk_without_input_bias_and_with_decoder_norm_rescaling(tmp_path):
    norms = torch.linspace(0.2, 3.0, F)
    w = _saelens(
        tmp_path, "topk", {"k": K, "apply_b_dec_to_input": False, "rescale_acts_by_decoder_norm": True}, dec_scale=norms
    )
    sae, _ = load_any(tmp_path)
    x = _x()
    n = w["W_dec"].norm(dim=-1)
    # TopKSAE.encode / decode with rescale_acts_by_decoder_norm and no b_dec subtraction
    z_ref = _topk_dense((x @ w["W_enc"] + w["b_enc"]) * n, K)
    recon_ref = (z_ref / n) @ w["W_dec"] + w["b_dec"]
    z, recon = _codes(sae, x)
    _close(z, z_ref)
    _close(recon, recon_ref)
    assert int((z > 0).sum(1).max()) <= K


def test_saelens_jumprelu_keeps_latents_above_their_own_threshold(tmp_path):
    theta = torch.linspace(-0.5, 2.0, F)  # negative thresholds act as 0: SAELens applies the ReLU first
    w = _saelens(tmp_path, "jumprelu", extra_w={"threshold": theta})
    sae, cfg = load_any(tmp_path)
    x = _x()
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    z_ref = torch.relu(pre) * (pre > theta)  # JumpReLUSAE.encode
    z, recon = _codes(sae, x)
    _close(z, z_ref)
    _close(recon, z_ref @ w["W_dec"] + w["b_dec"])
    assert cfg["architecture"] == "jumprelu" and 0 < int((z_ref > 0).sum()) < z_ref.numel()


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
def test_saelens_batchtopk_training_checkpoint_reads_as_its_inference_jumprelu(tmp_path, arch):
    norms = torch.linspace(0.5, 2.0, F)
    extra = {"k": 4.0, "rescale_acts_by_decoder_norm": True, "topk_threshold_lr": 0.01}
    if arch == "matryoshka_batchtopk":
        extra["matryoshka_widths"] = [6, 12, F]
    w = _saelens(tmp_path, arch, extra, {"topk_threshold": torch.tensor(0.7, dtype=torch.float64)}, dec_scale=norms)
    sae, _ = load_any(tmp_path)
    x = _x()
    # what save_inference_model writes: _fold_norm_topk, then threshold = topk_threshold for every latent
    n = w["W_dec"].norm(dim=-1)
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * n
    z_ref = torch.relu(pre) * (pre > 0.7)
    z, recon = _codes(sae, x)
    _close(z, z_ref)
    _close(recon, z_ref @ (w["W_dec"] / n[:, None]) + w["b_dec"])


def test_saelens_v5_topk_with_scaler_and_finetuning_factor(tmp_path):
    s, f = 0.37, torch.linspace(0.5, 1.5, F)
    w = _saelens(
        tmp_path,
        "standard",
        {"activation_fn": "topk", "activation_fn_kwargs": {"k": K}, "normalize_activations": True},
        {"scaling_factor": f},
        version=None,
    )
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["metadata"], cfg["architecture"]
    cfg.update(hook_point=HOOK, finetuning_scaling_factor=True)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": s}))
    sae, got = load_any(tmp_path)
    from osae.evaluate.batches import checkpoint_normalizer, reconstruct

    norm = checkpoint_normalizer(got)
    x = _x()
    z_ref = _topk_dense((x * s - w["b_dec"]) @ w["W_enc"] + w["b_enc"], K)
    recon_ref = ((z_ref * f) @ w["W_dec"] + w["b_dec"]) / s  # v5 decode, then run_time norm out
    z, _ = _codes(sae, norm.forward(x))
    _close(z, z_ref)
    _close(reconstruct(sae, norm, x), recon_ref)
    assert got["architecture"] == "topk" and got["hook"] == HOOK


def test_saelens_unknown_scale_is_estimated_on_the_store_or_refused(tmp_path, store8):
    store = ActivationStore(str(store8))
    hook = next(iter(store.hooks))
    _saelens(tmp_path / "sae", "standard", {"normalize_activations": "expected_average_only_in"})
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = hook
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="saved no scaling factor"):
        load_any(tmp_path / "sae")
    _, got = load_any(tmp_path / "sae", store=store)
    from osae.store import load_rows

    rows = load_rows(store, hook, "train", max_tokens=3000)
    x = rows.x if hasattr(rows, "x") else rows
    expected = D**0.5 / float(x.float().norm(dim=1).mean())
    assert got["normalization"]["kind"] == "scalar"
    assert got["normalization"]["scale"] == pytest.approx(expected, rel=1e-5)
    assert "estimated" in got["notes"][0]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architecture": "gated"}, "SAELens architecture 'gated'"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
        ({"reshape_activations": "hook_z"}, "hook_z"),
    ],
)
def test_saelens_unsupported_settings_are_refused_in_one_line(tmp_path, store8, change, message):
    _saelens(tmp_path / "sae", "standard", change)
    proc = _osae("evaluate", tmp_path / "sae", "--store", store8, "--no-model")
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# -- sparsify ------------------------------------------------------------------------------------
def _sparsify(hookdir, k=K, **cfg_extra):
    w = {
        "encoder.weight": _rand(F, D, seed=5),
        "encoder.bias": _rand(F, seed=6) * 0.2,
        "W_dec": _rand(F, D, seed=7),
        "b_dec": _rand(D, seed=8),
    }
    cfg = {
        "activation": "topk",
        "expansion_factor": 3,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": k,
        "multi_topk": True,
        "skip_connection": False,
        "transcode": False,
        "d_in": D,
        **cfg_extra,
    }
    hookdir.mkdir(parents=True)
    save_file(w, str(hookdir / "sae.safetensors"))
    (hookdir / "cfg.json").write_text(json.dumps(cfg))
    return w


def test_sparsify_hookpoint_directory_is_topk_of_relu(tmp_path):
    w = _sparsify(tmp_path / "run" / "layers.2")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"init_seeds": [7], "run_name": "r", "lr": 1e-3}))
    sae, cfg = load_any(tmp_path / "run" / "layers.2")
    x = _x()
    # fused_encoder: topk of relu(encoder(x - b_dec)); decode: embedding_bag of W_dec rows + b_dec
    z_ref = _topk_dense(torch.relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]), K)
    z, recon = _codes(sae, x)
    _close(z, z_ref)
    _close(recon, z_ref @ w["W_dec"] + w["b_dec"])
    assert (cfg["format"], cfg["hook"], cfg["seed"], sae.cfg.d_sae) == ("sparsify", HOOK, 7, D * 3)


def test_sparsify_seed_directories_and_module_names(tmp_path):
    _sparsify(tmp_path / "run" / "gpt_neox.layers.4.mlp" / "seed3")
    _, cfg = load_any(tmp_path / "run" / "gpt_neox.layers.4.mlp" / "seed3")
    assert (cfg["hook"], cfg["seed"]) == ("blocks.4.hook_mlp_out", 3)


@pytest.mark.parametrize("extra, message", [({"transcode": True}, "transcoder"), ({"skip_connection": True}, "skip")])
def test_sparsify_transcoders_and_skip_connections_are_refused(tmp_path, store8, extra, message):
    _sparsify(tmp_path / "layers.1", **extra)
    proc = _osae("evaluate", tmp_path / "layers.1", "--store", store8, "--no-model")
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr


# -- dictionary_learning -------------------------------------------------------------------------
def _dl(tmp, cls, state, **trainer):
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp / "ae.pt")
    cfg = {"dict_class": cls, "activation_dim": D, "dict_size": F, "seed": 1, "layer": 2, "lm_name": "m", **trainer}
    (tmp / "config.json").write_text(json.dumps({"trainer": cfg, "buffer": {"d_submodule": D}}))


def _dl_reference(cls, s, x):
    """dictionary_learning's encode and decode for each class (dictionary.py, trainers/)."""
    if cls == "AutoEncoder":
        z = torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
        return z, z @ s["decoder.weight"].T + s["bias"]
    if cls == "AutoEncoderNew":
        z = torch.relu(x @ s["encoder.weight"].T + s["encoder.bias"])
        return z, z @ s["decoder.weight"].T + s["decoder.bias"]
    if cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        r = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
        z = _topk_dense(r, int(s["k"])) if cls == "AutoEncoderTopK" else r * (r > s["threshold"])
        return z, z @ s["decoder.weight"].T + s["b_dec"]
    if cls == "MatryoshkaBatchTopKSAE":
        r = torch.relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
        z = r * (r > s["threshold"])
        return z, z @ s["W_dec"] + s["b_dec"]
    p = x @ s["W_enc"] + s["b_enc"]  # JumpReluAutoEncoder: apply_b_dec_to_input is False
    z = torch.relu(p * (p > s["threshold"]))
    return z, z @ s["W_dec"] + s["b_dec"]


def _dl_state(cls):
    enc, dec = _rand(F, D, seed=11), _rand(D, F, seed=12)
    b_enc, b_dec = _rand(F, seed=13) * 0.3, _rand(D, seed=14)
    if cls == "AutoEncoder":
        return {"bias": b_dec, "encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec}
    if cls == "AutoEncoderNew":
        return {"encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec, "decoder.bias": b_dec}
    if cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        return {
            "encoder.weight": enc,
            "encoder.bias": b_enc,
            "decoder.weight": dec,
            "b_dec": b_dec,
            "k": torch.tensor(K, dtype=torch.int),
            "threshold": torch.tensor(0.4),
        }
    state = {"W_enc": enc.T.contiguous(), "b_enc": b_enc, "W_dec": dec.T.contiguous(), "b_dec": b_dec}
    if cls == "MatryoshkaBatchTopKSAE":
        state.update(k=torch.tensor(K, dtype=torch.int), threshold=torch.tensor(0.4), group_sizes=torch.tensor([6, 18]))
    else:
        state["threshold"] = torch.linspace(0.0, 1.5, F)
    return state


@pytest.mark.parametrize(
    "cls",
    [
        "AutoEncoder",
        "AutoEncoderNew",
        "AutoEncoderTopK",
        "BatchTopKSAE",
        "MatryoshkaBatchTopKSAE",
        "JumpReluAutoEncoder",
    ],
)
def test_dictionary_learning_classes_match_their_encode_decode(tmp_path, cls):
    state = _dl_state(cls)
    _dl(tmp_path / "trainer_0", cls, state, k=K, submodule_name="resid_post_layer_2")
    sae, cfg = load_any(tmp_path / "trainer_0")
    x = _x()
    z_ref, recon_ref = _dl_reference(cls, state, x)
    z, recon = _codes(sae, x)
    _close(z, z_ref)
    _close(recon, recon_ref)
    assert (cfg["format"], cfg["hook"], cfg["seed"]) == ("dictionary_learning", HOOK, 1)
    assert 0 < int((z_ref > 0).sum()) < z_ref.numel()


def test_dictionary_learning_backup_is_read_in_its_normalised_units(tmp_path):
    state = _dl_state("AutoEncoderTopK")
    _dl(tmp_path / "t", "AutoEncoderTopK", {"ae": state, "norm_factor": 4.0, "step": 120, "config": {"k": K}}, k=K)
    sae, cfg = load_any(tmp_path / "t")
    assert cfg["normalization"] == {"kind": "scalar", "scale": 0.25} and cfg["step"] == 120
    z, _ = _codes(sae, _x() / 4.0)
    _close(z, _dl_reference("AutoEncoderTopK", state, _x() / 4.0)[0])


def test_pickled_ae_pt_is_refused_in_one_line(tmp_path, store8):
    (tmp_path / "t").mkdir()
    torch.save(torch.nn.Linear(D, F), tmp_path / "t" / "ae.pt")  # a whole module: loadable only by unpickling
    (tmp_path / "t" / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoder"}}))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_any(tmp_path / "t")
    proc = _osae("evaluate", tmp_path / "t", "--store", store8, "--no-model")
    assert proc.returncode == 1 and "does not unpickle" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- detection -----------------------------------------------------------------------------------
def test_unknown_layouts_are_refused_naming_the_files_found(tmp_path, store8):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"0")
    (tmp_path / "odd" / "cfg.json").write_text("{}")
    proc = _osae("evaluate", tmp_path / "odd", "--store", store8, "--no-model")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cfg.json, weights.bin" in proc.stderr and "sae_weights.safetensors" in proc.stderr
    _sparsify(tmp_path / "layers.0")
    assert detect_format(tmp_path / "layers.0") == "sparsify"
    with pytest.raises(UsageError, match="lacks sae_weights.safetensors"):
        load_any(tmp_path / "layers.0", format="saelens")
    with pytest.raises(UsageError, match="--format must be one of"):
        load_any(tmp_path / "layers.0", format="hf")


# -- evaluate across libraries, and pairs from configurations ------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    specs = [SAESpec("topk", s, {"d_sae": 32, "k": 3}, lr=3e-3) for s in (0, 1)]
    return fitted_toy_run(tmp_path_factory.mktemp("pairs"), specs, n=6000, tokens=256 * 20, normalization="scalar")


def test_renamed_seed_directories_still_pair(run, tmp_path):
    shutil.copytree(run / "run" / "topk-K32-k3-s0", tmp_path / "alpha")
    shutil.copytree(run / "run" / "topk-K32-k3-s1", tmp_path / "beta")
    proc = _osae("evaluate", tmp_path / "alpha", tmp_path / "beta", "--store", run / "toy.zarr", "--no-model", "--json")
    assert proc.returncode == 0, proc.stderr
    pairs = json.loads(proc.stdout)["pairs"]
    assert [(p["a"], p["b"], p["same_family"]) for p in pairs] == [("alpha", "beta", True)]


def test_pairs_all_compares_an_osae_topk_with_a_saelens_export(run, tmp_path):
    ckpt = run / "run" / "topk-K32-k3-s0"
    export(ckpt, tmp_path / "sl" / "blocks.0", "saelens")
    cfg = json.loads((tmp_path / "sl" / "blocks.0" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == json.loads((ckpt / "config.json").read_text())["hook"]
    args = [ckpt, tmp_path / "sl" / "blocks.0", "--store", run / "toy.zarr", "--no-model", "--json"]
    seeds = json.loads(_osae("evaluate", *args).stdout)
    assert seeds["pairs"] == []  # an export is another configuration, not another seed
    proc = _osae("evaluate", *args, "--pairs", "all")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    (pair,) = result["pairs"]
    assert {pair["a"], pair["b"]} == {"topk-K32-k3-s0", "blocks.0"}
    assert pair["stab"] == pytest.approx(1.0, abs=1e-4)  # the same dictionary, scale folded in
    assert result["saes"]["blocks.0"]["format"] == "saelens"
    assert result["saes"]["blocks.0"]["fvu"] == pytest.approx(result["saes"]["topk-K32-k3-s0"]["fvu"], rel=1e-3)
    assert "blocks.0.store" in result["notes"]


def test_pairs_all_stitches_a_larger_saelens_sae_into_an_osae_one(run, tmp_path):
    ckpt = run / "run" / "topk-K32-k3-s0"
    own = json.loads((ckpt / "config.json").read_text())
    d, big = own["d_in"], 64
    weights = {"W_enc": _rand(d, big, seed=1), "b_enc": _rand(big, seed=3) * 0.1, "b_dec": torch.zeros(d)}
    weights["W_dec"] = torch.nn.functional.normalize(_rand(big, d, seed=2), dim=1)
    sl = tmp_path / "sl"
    sl.mkdir()
    save_file(weights, str(sl / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": d, "d_sae": big, "dtype": "float32", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "metadata": {"hook_name": own["hook"]}}  # fmt: skip
    (sl / "cfg.json").write_text(json.dumps(cfg))
    args = [ckpt, sl, "--store", run / "toy.zarr", "--no-model", "--json"]
    assert json.loads(_osae("evaluate", *args).stdout)["stitching"] == []  # seeds: one architecture only
    proc = _osae("evaluate", *args, "--pairs", "all")
    assert proc.returncode == 0, proc.stderr
    (st,) = json.loads(proc.stdout)["stitching"]
    assert (st["small"], st["large"], st["d_sae_small"], st["d_sae_large"]) == ("topk-K32-k3-s0", "sl", 32, big)
    parts = st["novel_fraction"] + st["reconstruction_fraction"] + st["no_change_fraction"]
    assert parts == pytest.approx(1.0) and st["never_fired_fraction"] < 1  # random atoms fire, and mostly hurt


def test_permute_and_inspect_accept_foreign_checkpoints(run, tmp_path):
    from osae.evaluate.batches import checkpoint_normalizer, reconstruct

    hook = json.loads((run / "run" / "topk-K32-k3-s0" / "config.json").read_text())["hook"]
    D16 = 16
    theta = torch.linspace(0.0, 0.5, 32)
    w = {
        "W_enc": _rand(D16, 32, seed=21),
        "b_enc": _rand(32, seed=22) * 0.1,
        "W_dec": _rand(32, D16, seed=23),
        "b_dec": _rand(D16, seed=24),
        "threshold": theta,
    }
    sl = tmp_path / "jr"
    sl.mkdir()
    save_file(w, str(sl / "sae_weights.safetensors"))
    cfg = {"architecture": "jumprelu", "d_in": D16, "d_sae": 32, "metadata": {"hook_name": hook}}
    (sl / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "perm"
    proc = _osae("permute", sl, "--store", run / "toy.zarr", "--out", out, "--tokens", 2000)
    assert proc.returncode == 0, proc.stderr
    before, bcfg = load_any(sl)
    after, acfg = load_any(out)  # an osae checkpoint of the inference-only jumprelu architecture
    assert acfg["format"] == "osae" and acfg["architecture"] == "jumprelu" and acfg["source_format"] == "saelens"
    perm = torch.tensor(acfg["permuted"]["permutation"])
    assert not torch.equal(perm, torch.arange(32))
    torch.testing.assert_close(after.threshold, before.threshold[perm])
    x = _x(40, D16)
    _close(reconstruct(after, checkpoint_normalizer(acfg), x), reconstruct(before, checkpoint_normalizer(bcfg), x))
    # inspect loads it too, then needs token ids, which a synthetic store has none of
    proc = _osae("inspect", sl, "--store", run / "toy.zarr", "--out", tmp_path / "p.html", "--format", "saelens")
    assert proc.returncode == 1 and "no token ids" in proc.stderr and "Traceback" not in proc.stderr


def test_sparsify_export_round_trips_through_load_any(run, tmp_path):
    ckpt = run / "run" / "topk-K32-k3-s0"
    export(ckpt, tmp_path / "layers.0", "sparsify")
    cfg = json.loads((tmp_path / "layers.0" / "cfg.json").read_text())
    assert set(cfg) == {
        "activation", "expansion_factor", "normalize_decoder", "num_latents", "k", "multi_topk",
        "skip_connection", "transcode", "d_in",
    }  # fmt: skip
    from safetensors import safe_open

    with safe_open(str(tmp_path / "layers.0" / "sae.safetensors"), "pt") as f:
        assert set(f.keys()) == {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}  # SparseCoder's state dict
    from osae.evaluate.batches import checkpoint_normalizer, reconstruct
    from osae.train.checkpoint import load_frozen

    ours, ours_cfg = load_frozen(ckpt)
    theirs, theirs_cfg = load_any(tmp_path / "layers.0")
    x = _x(64, 16) * 3
    norm = checkpoint_normalizer(ours_cfg)
    _close(reconstruct(theirs, checkpoint_normalizer(theirs_cfg), x), reconstruct(ours, norm, x))
    s = float(ours_cfg["normalization"]["scale"])
    _close(_codes(theirs, x)[0] * s, _codes(ours, norm.forward(x))[0])  # folded: codes scale by 1/s
    with pytest.raises(UsageError, match="sparsify has no equivalent"):
        relu = tmp_path / "relu"
        shutil.copytree(ckpt, relu)
        c = json.loads((relu / "config.json").read_text())
        c.update(architecture="relu", weights_sha256=None)
        (relu / "config.json").write_text(json.dumps(c))
        export(relu, tmp_path / "x", "sparsify")


def test_a_checkpoint_of_another_store_is_evaluated_with_a_note(run, tmp_path):
    write_toy_store(tmp_path / "other.zarr", ToyConfig(d=16, n_atoms=32, m=3, n=3000, n_eval=1000, seed=5))
    ckpt = run / "run" / "topk-K32-k3-s0"
    proc = _osae("evaluate", ckpt, "--store", tmp_path / "other.zarr", "--no-model", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "was trained on" in result["notes"]["topk-K32-k3-s0.store"] and result["saes"]["topk-K32-k3-s0"]["fvu"] > 0
    proc = _osae("evaluate", ckpt, "--store", run / "toy.zarr", "--no-model", "--json")
    assert "topk-K32-k3-s0.store" not in json.loads(proc.stdout)["notes"]  # its own store: nothing to say
