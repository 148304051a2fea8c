"""The Hugging Face dataset source, through the very call harvest makes for hub ids.

The hub is unreachable here, so the dataset is put where `datasets` looks for a hub dataset it cannot
reach: its own cache (`<namespace>___<name>/<config>/<version>/<hash>/`, what an earlier online
`load_dataset` leaves behind). `osae harvest --dataset osae-test/tiny_texts` then goes through
`datasets.load_dataset(id, split=..., streaming=True)` exactly as on a machine with a warm cache and no
network, and the stored tokens are checked against the tokenizer's own output for those texts.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from osae.store import ActivationStore

from .tiny import TEXT_FILES, save_tiny_model

pytest.importorskip("datasets")

HUB_ID = "osae-test/tiny_texts"
CONTEXT = 16


def documents() -> dict[str, list[str]]:
    """Real text (standard-library sources) cut into documents of a few lines, per split."""
    root = Path(sysconfig.get_paths()["stdlib"])
    lines = "\n".join((root / f).read_text() for f in TEXT_FILES[:3]).splitlines(keepends=True)
    docs = ["".join(lines[i : i + 12]) for i in range(0, len(lines), 12)]
    return {"train": docs[:-20], "validation": docs[-20:]}


def cache_hub_dataset(cache: Path, splits: dict[str, list[str]]) -> None:
    """Write `splits` as the datasets cache of HUB_ID, config "default" (parquet built by datasets itself)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    raw = cache.parent / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, docs in splits.items():
        pq.write_table(pa.table({"content": docs, "n_chars": [len(d) for d in docs]}), raw / f"{split}.parquet")
        files[split] = [str(raw / f"{split}.parquet")]
    builder = Parquet(cache_dir=str(raw / "build"), dataset_name=HUB_ID.split("/")[1], data_files=files)
    builder.download_and_prepare()
    namespace, name = HUB_ID.split("/")
    shutil.copytree(builder.cache_dir, cache / f"{namespace}___{name}" / "default" / "0.0.0" / ("0" * 16))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    splits = documents()
    cache_hub_dataset(root / "datasets-cache", splits)
    env = {**os.environ, "HF_DATASETS_CACHE": str(root / "datasets-cache"), "HF_HUB_OFFLINE": "1", "OSAE_DEBUG": ""}
    return {"model": save_tiny_model("gpt2", root / "model"), "env": env, "splits": splits, "root": root}


def harvest(hub, out: Path, *extra) -> subprocess.CompletedProcess:
    args = [
        "harvest",
        "--model",
        hub["model"],
        "--dataset",
        HUB_ID,
        "--text-column",
        "content",
        "--layer",
        "1",
        "--context-size",
        CONTEXT,
        "--batch-size",
        4,
        "--out",
        out,
        *extra,
    ]
    return subprocess.run(
        [sys.executable, "-m", "osae", *map(str, args)], capture_output=True, text=True, timeout=300, env=hub["env"]
    )


def packed_stream(model_dir: Path, docs: list[str]) -> np.ndarray:
    """What packed windows hold: every document's tokens followed by EOS, concatenated."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = []
    for doc in docs:
        ids += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return np.asarray(ids)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_a_hub_dataset_is_harvested_token_for_token(hub, split, tmp_path):
    out = tmp_path / "hub.zarr"
    proc = harvest(hub, out, "--split", split, "--tokens", 900, "--store-dtype", "float32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = ActivationStore(out)
    assert store.complete and store.n_tokens >= 900 and store.n_tokens % (CONTEXT - 1) == 0
    want = packed_stream(hub["model"], hub["splits"][split])
    assert len(want) >= store.n_tokens, "the split must hold more text than the budget"
    np.testing.assert_array_equal(store.read_rows("tokens", 0, store.n_tokens), want[: store.n_tokens])
    windows = store.array("sequences/context")[: store.n_sequences]
    np.testing.assert_array_equal(windows[:, 1:].reshape(-1), want[: store.n_tokens])  # BOS, then the stream
    source = store.meta["provenance"]["dataset"]
    assert source["kind"] == "hub" and source["id"] == HUB_ID and source["split"] == split
    assert source["text_column"] == "content"


def test_a_missing_column_of_a_hub_dataset_is_one_line(hub, tmp_path):
    proc = harvest(hub, tmp_path / "x.zarr", "--text-column", "body", "--tokens", 100)
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("WARNING", "INFO"))]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no column 'body'" in lines[0] and "content" in lines[0], lines[0]
    assert not (tmp_path / "x.zarr").exists()


def test_an_unreachable_uncached_hub_dataset_is_one_line(hub, tmp_path):
    args = [
        "harvest",
        "--model",
        hub["model"],
        "--dataset",
        "osae-test/not_cached",
        "--layer",
        "1",
        "--tokens",
        100,
        "--out",
        tmp_path / "x.zarr",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "osae", *map(str, args)], capture_output=True, text=True, timeout=300, env=hub["env"]
    )
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("WARNING", "INFO"))]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot load dataset 'osae-test/not_cached'" in lines[0] and "python-stdlib" in lines[0], lines[0]
