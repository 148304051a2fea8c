"""`osae store verify` on real stores with one damaged byte, chunk or number: exit 1 and one whole line naming it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from osae.store import ActivationStore, tools
from osae.store.integrity import finding_line
from osae.synthetic.toy import ToyConfig, write_toy_store

from .helpers import HOOK, make_store

ACTS = f"acts/{HOOK}"
# Every reason a finding can give ends with one of these words: a line cut short would not.
REASON_ENDINGS = ("crc32c check", "fill values", "as zeros", "blake2b digest", "NaN or Inf", "needs", "requires it")


def osae_verify(path, *extra):
    return subprocess.run(
        [sys.executable, "-m", "osae", "store", "verify", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OSAE_DEBUG": ""},
    )


def bad_lines(proc) -> list[str]:
    """The finding lines on stderr (the progress bar is off: stderr is not a terminal)."""
    return [line for line in proc.stderr.splitlines() if line.startswith("bad   ")]


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def token_store(tmp_path_factory):
    """6,000 rows with token ids: 24 chunks of 256 rows in 3 shards, 400 sequences with their windows."""
    path = tmp_path_factory.mktemp("verify") / "tokens.zarr"
    make_store(path, n_seqs=400, ctx=16, d=16, chunk_rows=256)
    return path


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("verify") / "toy.zarr"
    write_toy_store(path, ToyConfig(d=16, n_atoms=20, m=3, n=2048, n_eval=512))
    return path


@pytest.fixture
def copy_of(tmp_path):
    def copy(store: Path) -> Path:
        out = tmp_path / store.name
        shutil.copytree(store, out)
        return out

    return copy


def test_an_intact_store_passes_with_every_array_checked(token_store, toy_store):
    proc = osae_verify(token_store)
    assert proc.returncode == 0, proc.stderr
    assert "checked 96 chunks of 6,000 tokens: ok (and 6 chunks of digests, sequences)" in proc.stdout
    assert bad_lines(proc) == []
    report = tools.verify(toy_store)
    assert report["ok"], report["bad_chunks"]
    store = ActivationStore(toy_store)
    assert {f"ground_truth/{n}" for n in store.ground_truth_names} <= set(report["checked_other_arrays"])
    assert report["fingerprint"] == tools.info(toy_store)["fingerprint"]


# One flipped byte in a chunk file of each kind of array of a store with token ids: (file, offset, array, chunk).
TOKEN_STORE_FLIPS = [
    (f"{ACTS}/c/1/0", 100, ACTS, 8),  # inside the first inner chunk of the second shard
    ("tokens/c/0", 300, "tokens", 0),
    ("seq_id/c/2", 10, "seq_id", 16),
    ("position/c/0", 1200, "position", 1),  # inner chunks of 256 int32 are 1,028 bytes with their crc32c
    ("sequences/row_start/c/0", 8, "sequences/row_start", 0),
    ("sequences/context/c/0/0", 100, "sequences/context", 0),
    ("digests/tokens/c/0", 16, "digests/tokens", 0),
]


def test_a_flipped_byte_is_one_line_naming_the_array_and_chunk(token_store, copy_of):
    path = copy_of(token_store)
    for file, offset, _, _ in TOKEN_STORE_FLIPS:
        flip_byte(path / file, offset)
    proc = osae_verify(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = bad_lines(proc)
    assert len(lines) == len(TOKEN_STORE_FLIPS), lines
    for _, _, array, chunk in TOKEN_STORE_FLIPS:
        [line] = [x for x in lines if x.startswith(f"bad   {array} chunk {chunk}: ")]
        assert "checksum mismatch: " in line and line.endswith("fail their crc32c check"), line
    assert "Stored and computed" not in proc.stderr and "Traceback" not in proc.stderr
    assert f"{len(TOKEN_STORE_FLIPS)} problem(s)" in proc.stdout


def test_a_damaged_digest_array_leaves_no_fingerprint(token_store, copy_of):
    path = copy_of(token_store)
    flip_byte(path / "digests" / "acts" / HOOK / "c" / "0", 40)
    report = tools.verify(path)
    assert [(b["array"], b["chunk"], b["kind"]) for b in report["bad_chunks"]] == [(f"digests/{ACTS}", 0, "checksum")]
    assert report["fingerprint"] is None
    info = subprocess.run([sys.executable, "-m", "osae", "store", "info", str(path)], capture_output=True, text=True)
    assert info.returncode == 0 and "Traceback" not in info.stderr
    assert "chunk digests of 'acts/" in info.stdout and "run `osae store verify` on it" in info.stdout


def test_a_flipped_byte_in_each_array_of_a_toy_store_is_found(toy_store, copy_of):
    """The activations and every ground-truth array of a toy store, each with its first chunk damaged."""
    store = ActivationStore(toy_store)
    arrays = [f"acts/{n}" for n in store.hooks] + [f"ground_truth/{n}" for n in store.ground_truth_names]
    assert len(arrays) > 2
    path = copy_of(toy_store)
    for array in arrays:
        first_chunk = sorted(p for p in (path / array / "c").rglob("*") if p.is_file())[0]
        flip_byte(first_chunk, 4)
    proc = osae_verify(path)
    assert proc.returncode == 1, proc.stdout
    lines = bad_lines(proc)
    assert len(lines) == len(arrays), lines
    for array in arrays:
        assert sum(x.startswith(f"bad   {array} chunk 0: checksum mismatch: ") for x in lines) == 1, (array, lines)


def test_a_damaged_shard_index_names_each_of_its_chunks(token_store, copy_of):
    path = copy_of(token_store)
    flip_byte(path / ACTS / "c" / "0" / "0", -10)  # the shard index (with its own crc32c) sits at the end
    report = tools.verify(path)
    assert [(b["array"], b["chunk"]) for b in report["bad_chunks"]] == [(ACTS, c) for c in range(8)]


def test_chunks_lost_or_rewritten_behind_the_checksum(token_store, copy_of):
    path = copy_of(token_store)
    (path / "sequences" / "context" / "c" / "0" / "0").unlink()  # reads back as fill values, crc32c and all
    (path / "position" / "c" / "1").unlink()  # a whole shard: chunks 8..15 read back as zeros
    # New values written through zarr carry a valid crc32c: only the digest shows the change.
    zarr.open_array(path / "tokens", mode="r+")[256:512] = np.arange(256, dtype=np.int32)
    report = tools.verify(path)
    found = {(b["array"], b["chunk"]): b["kind"] for b in report["bad_chunks"]}
    assert found == {
        ("sequences/context", 0): "missing",
        **{("position", c): "missing" for c in range(8, 16)},
        ("tokens", 1): "digest",
    }
    proc = osae_verify(path)
    assert proc.returncode == 1
    lines = bad_lines(proc)
    assert "bad   tokens chunk 1: digest mismatch: rows 256:512 differ from their recorded blake2b digest" in lines
    assert "bad   position chunk 8: missing chunk: no shard file c/1, so rows 2048:2304 read as zeros" in lines


def test_a_missing_array_and_changed_statistics_are_named(toy_store, copy_of):
    path = copy_of(toy_store)
    shutil.rmtree(path / "digests")
    root = json.loads((path / "zarr.json").read_text())
    stats = root["attributes"]["osae"]["commit"]["stats"]["toy"]
    stats["sum_sq"][3] *= 1.01
    (path / "zarr.json").write_text(json.dumps(root))
    report = tools.verify(path)
    lines = [finding_line(b) for b in report["bad_chunks"]]
    assert lines[0] == "digests/acts/toy: missing array: the store format requires it"
    assert lines[1].startswith("acts/toy: statistics in the commit record: sum_sq[3] is ")
    assert lines[1].endswith("(1 of 16 dimensions differ)") and len(lines) == 2
    assert report["fingerprint"] is None


def test_json_lists_the_same_findings_as_the_lines(copy_of, token_store):
    path = copy_of(token_store)
    flip_byte(path / "tokens" / "c" / "0", 300)
    (path / "seq_id" / "c" / "1").unlink()
    text, as_json = osae_verify(path), osae_verify(path, "--json")
    assert text.returncode == as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert [f"bad   {finding_line(b)}" for b in report["bad_chunks"]] == bad_lines(text)
    assert len(bad_lines(text)) == 9
    for line in bad_lines(text):
        assert line.endswith(REASON_ENDINGS), line


def test_unreadable_array_metadata_is_one_line(token_store, copy_of):
    path = copy_of(token_store)
    (path / "sequences" / "row_start" / "zarr.json").write_text("{not json")
    report = tools.verify(path)
    assert [(b["array"], b["chunk"], b["kind"]) for b in report["bad_chunks"]] == [
        ("sequences/row_start", None, "unreadable")
    ]
    assert finding_line(report["bad_chunks"][0]).startswith("sequences/row_start: unreadable array metadata")


def test_a_missing_activation_array_is_one_finding_not_a_statistics_one(toy_store, copy_of):
    path = copy_of(toy_store)
    shutil.rmtree(path / "acts" / "toy")
    report = tools.verify(path)
    assert [(b["array"], b["chunk"], b["kind"]) for b in report["bad_chunks"]] == [("acts/toy", None, "missing")]
