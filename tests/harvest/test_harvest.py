import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from osae.errors import StoreError
from osae.harvest import HarvestConfig, harvest
from osae.store import ActivationStore, store_info, verify_store
from osae.store.core.split import eval_chunk_mask
from tests.launch import accelerate_launch

from .tiny import save_tiny_model, text_dir

KINDS = ["gpt_neox", "gemma2", "gpt2", "llama"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {k: save_tiny_model(k, root / k) for k in KINDS}


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    return text_dir(tmp_path_factory.mktemp("text") / "docs")


def _reference(model_dir, windows: np.ndarray):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(windows).long(), output_hidden_states=True).hidden_states


@pytest.mark.parametrize("kind", KINDS)
def test_stored_activations_equal_a_direct_forward(kind, models, texts, tmp_path):
    out = tmp_path / "a.zarr"
    harvest(
        HarvestConfig(
            out=str(out),
            model=str(models[kind]),
            layers=[0, 1],
            hook="resid_post",
            dataset=str(texts),
            tokens=2000,
            context_size=32,
            batch_size=7,
            store_dtype="float32",
        ),
        progress=False,
    )
    store = ActivationStore(out)
    assert store.complete and store.n_tokens == 65 * 31  # whole windows of 31 stored rows
    n_seq = store.n_sequences
    windows = store.array("sequences/context")[:n_seq]
    assert (windows[:, 0] == 0).all()  # BOS first
    hidden = _reference(models[kind], windows)
    for layer in (0, 1):
        got = store.read_acts(f"blocks.{layer}.hook_resid_post", 0, store.n_tokens).reshape(n_seq, 31, -1)
        want = hidden[layer + 1][:, 1:].numpy()  # BOS excluded
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(store.read_rows("tokens", 0, store.n_tokens), windows[:, 1:].reshape(-1))
    np.testing.assert_array_equal(store.read_rows("position", 0, store.n_tokens), np.tile(np.arange(1, 32), n_seq))
    np.testing.assert_array_equal(store.read_rows("seq_id", 0, store.n_tokens), np.repeat(np.arange(n_seq), 31))
    prov = store.meta["provenance"]
    assert prov["model"]["model_type"] == kind and prov["harvest_args"]["layers"] == [0, 1]
    assert prov["dataset"]["kind"] == "files" and len(prov["dataset"]["files"]) == 8
    assert verify_store(out)["ok"]


def test_resid_pre_and_float16_storage(models, texts, tmp_path):
    out = tmp_path / "pre.zarr"
    harvest(
        HarvestConfig(
            out=str(out),
            model=str(models["gpt_neox"]),
            layers=[2],
            hook="resid_pre",
            dataset=str(texts),
            tokens=600,
            context_size=16,
            include_bos=True,
        ),
        progress=False,
    )
    store = ActivationStore(out)
    assert store.dtype("blocks.2.hook_resid_pre") == "float16"
    windows = store.array("sequences/context")[: store.n_sequences]
    want = _reference(models["gpt_neox"], windows)[2].numpy().astype(np.float16)  # input of block 2, BOS kept
    got = store.read_acts("blocks.2.hook_resid_pre", 0, store.n_tokens).reshape(len(windows), 16, -1)
    np.testing.assert_array_equal(got, want)


def test_the_forward_stops_after_the_deepest_block(models):
    from osae.harvest.hooks import HookPoint, capture, find_blocks, run_to_hooks
    from osae.harvest.models import load_model

    lm = load_model(str(models["gpt_neox"]), device="cpu")
    blocks = find_blocks(lm.model)[0]
    ran = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    with capture(lm.model, [HookPoint("mlp_out", 0), HookPoint("attn_out", 1)]) as cache:
        acts = run_to_hooks(lm.model, torch.zeros(2, 8, dtype=torch.long), cache)
    for h in handles:
        h.remove()
    assert ran == [0, 1] and set(acts) == {"blocks.0.hook_mlp_out", "blocks.1.hook_attn_out"}


def test_document_windows_store_no_padding(models, texts, tmp_path):
    out = tmp_path / "doc.zarr"
    paragraphs = [p for f in sorted(texts.iterdir()) for p in f.read_text().split("\n\n") if p.strip()]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"body": p}) + "\n" for p in paragraphs))
    harvest(
        HarvestConfig(
            out=str(out),
            model=str(models["llama"]),
            layers=[1],
            dataset=str(docs),
            text_column="body",
            tokens=1500,
            context_size=64,
            windows="document",
            store_dtype="float32",
        ),
        progress=False,
    )
    store = ActivationStore(out)
    ctx = store.array("sequences/context")[: store.n_sequences]
    lengths = (ctx >= 0).sum(1) - 1
    assert store.n_tokens == lengths.sum() >= 1500 and (lengths < 63).any()
    hidden = _reference(models["llama"], np.where(ctx >= 0, ctx, 0))  # padding sits after the rows we compare
    got = store.read_acts("blocks.1.hook_resid_post", 0, store.n_tokens)
    want = np.concatenate([hidden[2][i, 1 : 1 + n].numpy() for i, n in enumerate(lengths)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


HARVEST_ARGS = ["--layer", "1", "--tokens", "9000", "--context-size", "32", "--batch-size", "4"]


def _cli(*args, env=None):
    return [sys.executable, "-m", "osae", "harvest", *args]


@pytest.mark.slow
def test_two_processes_write_the_same_store_as_one(models, texts, tmp_path):
    base = ["--model", str(models["gpt_neox"]), "--dataset", str(texts), *HARVEST_ARGS, "--store-dtype", "float32"]
    one = subprocess.run(_cli(*base, "--out", str(tmp_path / "one.zarr")), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            *accelerate_launch(2),
            "-m",
            "osae",
            "harvest",
            *base,
            "--out",
            str(tmp_path / "two.zarr"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = ActivationStore(tmp_path / "one.zarr"), ActivationStore(tmp_path / "two.zarr")
    assert b.meta["provenance"]["processes"] == 2 and a.n_tokens == b.n_tokens and b.complete
    for path in ("tokens", "seq_id", "position"):
        np.testing.assert_array_equal(a.read_rows(path, 0, a.n_tokens), b.read_rows(path, 0, b.n_tokens))
    np.testing.assert_allclose(
        a.read_acts("blocks.1.hook_resid_post", 0, a.n_tokens),
        b.read_acts("blocks.1.hook_resid_post", 0, b.n_tokens),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_array_equal(a.array("sequences/context")[:], b.array("sequences/context")[:])
    assert verify_store(tmp_path / "two.zarr")["ok"]


@pytest.mark.slow
def test_a_killed_harvest_resumes_to_the_uninterrupted_result(models, texts, tmp_path):
    base = ["--model", str(models["gpt_neox"]), "--dataset", str(texts), *HARVEST_ARGS, "--batch-size", "1"]
    ref = subprocess.run(_cli(*base, "--out", str(tmp_path / "ref.zarr")), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "cut.zarr"
    # The run SIGKILLs itself right after its first commit record is durable (osae.faults).
    proc = subprocess.run(
        _cli(*base, "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OSAE_KILL_AT": "store-commit:1"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    cut = ActivationStore(out, quiet=True)
    assert cut.n_tokens == cut.shard_rows < 9000 and not cut.complete  # one process: one shard a round
    again = subprocess.run(_cli(*base, "--out", str(out)), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    a, b = ActivationStore(tmp_path / "ref.zarr"), ActivationStore(out)
    assert b.complete and store_info(out)["fingerprint"] == store_info(tmp_path / "ref.zarr")["fingerprint"]
    np.testing.assert_array_equal(a.array("sequences/row_start")[:], b.array("sequences/row_start")[:])


def test_identical_arguments_on_a_complete_store_do_nothing_and_others_are_refused(models, texts, tmp_path):
    cfg = dict(
        out=str(tmp_path / "s.zarr"),
        model=str(models["gpt2"]),
        layers=[1],
        dataset=str(texts),
        tokens=500,
        context_size=16,
    )
    harvest(HarvestConfig(**cfg), progress=False)
    assert harvest(HarvestConfig(**cfg), progress=False)["already_complete"]
    with pytest.raises(StoreError, match="other arguments .*layers"):
        harvest(HarvestConfig(**{**cfg, "layers": [2]}), progress=False)
    with pytest.raises(StoreError, match="context_size"):
        harvest(HarvestConfig(**{**cfg, "context_size": 32}), progress=False)
    harvest(HarvestConfig(**{**cfg, "layers": [2], "overwrite": True}), progress=False)
    assert list(ActivationStore(cfg["out"]).hooks) == ["blocks.2.hook_resid_post"]


def _one_line_error(args, pattern):
    proc = subprocess.run([sys.executable, "-m", "osae", *args], capture_output=True, text=True, timeout=300)
    # What a terminal shows: a progress bar erased with carriage returns leaves nothing behind.
    shown = [l.split("\r")[-1] for l in proc.stderr.split("\n")]
    lines = [l for l in shown if l.strip() and not l.startswith(("WARNING", "INFO"))]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("osae: error:") and pattern in lines[0], lines[0]


@pytest.mark.slow
def test_bad_input_gets_one_clear_line(models, texts, tmp_path):
    m = str(models["gpt_neox"])
    out = str(tmp_path / "x.zarr")
    _one_line_error(["harvest", "--model", m, "--layer", "7", "--out", out, "--dataset", str(texts)], "layers 0..2")
    _one_line_error(["harvest", "--model", m, "--hook", "resid_mid", "--out", out], "unknown hook 'resid_mid'")
    _one_line_error(["harvest", "--model", m, "--tokens", "0", "--out", out], "--tokens must be positive")
    _one_line_error(
        ["harvest", "--model", "no-such-org/no-such-model", "--out", out, "--dataset", str(texts)], "offline choices"
    )
    _one_line_error(["harvest", "--model", "nonsense", "--out", out], "unknown model 'nonsense'")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    _one_line_error(["harvest", "--model", m, "--dataset", str(empty), "--out", out, "--layer", "1"], "holds no text")
    assert not (tmp_path / "x.zarr").exists()  # nothing was created for a run that could not start
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"content": "def f(): pass"}) + "\n")
    _one_line_error(
        ["harvest", "--model", m, "--dataset", str(jsonl), "--out", out + "2", "--layer", "1"], "no 'text' field"
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_a_dataset_that_runs_out_finishes_the_store_with_what_it_holds(models, texts, tmp_path, processes):
    few = text_dir(tmp_path / "few", n_files=1)
    base = ["--model", str(models["gpt_neox"]), "--dataset", str(few), *HARVEST_ARGS[:2], "--context-size", "32"]
    base += ["--batch-size", "4", "--tokens", "10000000"]
    launch = [*accelerate_launch(2), "-m", "osae"] if processes == 2 else [sys.executable, "-m", "osae"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.run(
            [*launch, "harvest", *base, "--out", str(tmp_path / "s.zarr")],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        for _ in range(2)
    ]
    assert runs[0].returncode == 0 and "ran out after" in runs[0].stderr, runs[0].stderr[-3000:]
    store = ActivationStore(tmp_path / "s.zarr")
    assert store.complete and 0 < store.n_tokens < 10_000_000 and store.n_tokens % 31 == 0  # whole windows
    assert verify_store(tmp_path / "s.zarr")["ok"]
    split = store_info(tmp_path / "s.zarr")["split"]
    starts = store.array("sequences/row_start")[:]
    ends = np.append(starts[1:], store.n_tokens)
    is_eval = eval_chunk_mask(store.meta["split"], store.n_chunks, store.chunk_rows)
    mixed = [
        len(set(is_eval[a // store.chunk_rows : (b - 1) // store.chunk_rows + 1])) > 1 for a, b in zip(starts, ends)
    ]
    assert split["straddling_tokens"] == int((ends - starts)[mixed].sum())
    assert split["train_tokens"] + split["eval_tokens"] + split["straddling_tokens"] == store.n_tokens
    # The same command again finds the store complete, instead of a store that no command can finish.
    assert runs[1].returncode == 0 and "already complete" in runs[1].stderr, runs[1].stderr[-3000:]
    exact = subprocess.run(
        _cli(*base[:-1], str(store.n_tokens), "--out", str(tmp_path / "exact.zarr")), capture_output=True, text=True
    )
    assert exact.returncode == 0, exact.stderr
    ref = ActivationStore(tmp_path / "exact.zarr")
    assert ref.n_tokens == store.n_tokens
    np.testing.assert_array_equal(ref.read_rows("tokens", 0, ref.n_tokens), store.read_rows("tokens", 0, ref.n_tokens))
    np.testing.assert_array_equal(ref.array("sequences/row_start")[:], store.array("sequences/row_start")[:])
