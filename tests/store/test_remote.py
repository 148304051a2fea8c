"""Remote stores against real servers on loopback: moto's S3 server (a separate process) and a plain
read-only HTTP server (a thread). Nothing in osae is mocked: every byte goes through fsspec and zarr."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from osae.errors import StoreError, StoreFormatError, StoreLockedError
from osae.store import (
    ActivationStore,
    LoaderConfig,
    ShuffledLoader,
    StoreWriter,
    hook_spec,
    split_intervals,
    tools,
)

from .helpers import HOOK, make_store

pytest.importorskip("s3fs")
pytest.importorskip("aiohttp")
pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET = "osae-test"
SMALL = dict(n_seqs=60, ctx=16, d=16, chunk_rows=256)
N_ROWS = SMALL["n_seqs"] * (SMALL["ctx"] - 1)
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# -- servers --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not listen on 127.0.0.1:{port} within {timeout} s")


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto's standalone S3 server on a free loopback port, with the AWS_* environment pointing at it.

    Yields (endpoint URL, the server's request log); a bucket BUCKET exists. The environment is restored
    and the server stopped at the end of the module.
    """
    port = _free_port()
    # The server logs every request: to a file, never to a pipe nobody drains (a full pipe blocks it).
    log = tmp_path_factory.mktemp("moto") / "server.log"
    log_file = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, proc, log)
        endpoint = f"http://127.0.0.1:{port}"
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
                mp.setenv(k, v)
            for k in ("AWS_ENDPOINT_URL_S3", "OSAE_STORAGE_OPTIONS", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
                mp.delenv(k, raising=False)
            _s3_client(endpoint).create_bucket(Bucket=BUCKET)
            yield endpoint, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


@pytest.fixture(scope="module")
def s3_server(moto):
    """The endpoint URL of the module's moto server."""
    return moto[0]


def _s3_client(endpoint: str):
    """A plain boto3 client, independent of osae's fsspec path, to look at the bucket directly."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _s3_keys(endpoint: str, prefix: str) -> set[str]:
    pages = _s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


class _ReadOnlyRangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte ranges (as nginx, S3 websites or a CDN serve them); no writes; no log lines.

    zarr's sharding reads a shard's index with a suffix range and its chunks with byte ranges, so a server
    that ignored `Range` would not be a faithful static host.
    """

    def log_message(self, *args) -> None:
        pass

    def _refuse(self) -> None:
        self.send_error(405, "read-only server")

    do_PUT = do_POST = do_DELETE = do_PATCH = _refuse

    def send_head(self):
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not rng or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if not m or (not m.group(1) and not m.group(2)):
            self.send_error(416, "bad range")
            return None
        a, b = m.groups()
        if not a:  # suffix: the last b bytes
            start, end = max(0, size - int(b)), size - 1
        else:
            start, end = int(a), min(int(b), size - 1) if b else size - 1
        if start >= size or start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(body)


@contextlib.contextmanager
def _serving(root: Path, handler: type[http.server.BaseHTTPRequestHandler]):
    """Serve `root` with `handler` from a thread on a free loopback port; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """(directory, base URL): the directory is served read-only over plain HTTP on 127.0.0.1."""
    root = tmp_path_factory.mktemp("http-root")
    with _serving(root, _ReadOnlyRangeHandler) as base:
        yield root, base


@pytest.fixture(scope="module")
def http_store(http_root):
    """A small local store written under the HTTP root: (URL, local path, the rows written)."""
    root, base = http_root
    data = make_store(root / "served.zarr", **SMALL)
    return f"{base}/served.zarr", root / "served.zarr", data


@pytest.fixture()
def closed_port():
    """A loopback port bound but not listening: connecting is refused, and no one else can take it meanwhile."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def _assert_same_rows(store: ActivationStore, data: dict) -> None:
    assert store.complete and store.n_tokens == N_ROWS and store.n_sequences == SMALL["n_seqs"]
    np.testing.assert_array_equal(store.read_acts(HOOK, 0, store.n_tokens), data["acts"][HOOK])
    for k in ("tokens", "seq_id", "position"):
        np.testing.assert_array_equal(store.read_rows(k, 0, store.n_tokens), data[k])
    np.testing.assert_array_equal(
        store.array("sequences/row_start")[:], np.arange(SMALL["n_seqs"]) * (SMALL["ctx"] - 1)
    )


def _osae(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "osae.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OSAE_DEBUG": ""},
        cwd=Path(__file__).parents[2],
    )


# -- S3 -------------------------------------------------------------------------------------------
def test_s3_store_round_trip_info_verify_and_fingerprint(s3_server, tmp_path):
    url = f"s3://{BUCKET}/x.zarr"
    data = make_store(url, **SMALL)
    keys = _s3_keys(s3_server, "x.zarr/")
    assert "x.zarr/zarr.json" in keys and any(k.startswith(f"x.zarr/acts/{HOOK}/c/") for k in keys)
    assert not any("lease" in k for k in keys), "a closed writer leaves no lease behind"

    store = ActivationStore(url)
    _assert_same_rows(store, data)

    local = make_store(tmp_path / "local.zarr", **SMALL)  # the same seed: the same content
    np.testing.assert_array_equal(local["acts"][HOOK], data["acts"][HOOK])
    remote_info, local_info = tools.info(url), tools.info(tmp_path / "local.zarr")
    assert remote_info["location"] == url
    assert remote_info["n_tokens"] == N_ROWS and remote_info["complete"]
    assert remote_info["fingerprint"] is not None
    assert remote_info["fingerprint"] == local_info["fingerprint"]
    # Listing sizes works on S3 and the row arrays take the same bytes as on disk.
    assert remote_info["nbytes_stored"] == local_info["nbytes_stored"] > 0
    assert remote_info["nbytes_total"] > remote_info["nbytes_stored"]

    report = tools.verify(url)
    assert report["ok"], report["bad_chunks"]
    assert report["checked_chunks"] == store.n_chunks * 4
    assert report["fingerprint"] == local_info["fingerprint"]


def test_s3_endpoint_from_osae_storage_options(s3_server, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("OSAE_STORAGE_OPTIONS", json.dumps({"client_kwargs": {"endpoint_url": s3_server}}))
    url = f"s3://{BUCKET}/opts.zarr"
    data = make_store(url, n_seqs=10, ctx=16, d=16, chunk_rows=256)
    np.testing.assert_array_equal(ActivationStore(url).read_acts(HOOK, 0, 150), data["acts"][HOOK])
    monkeypatch.setenv("OSAE_STORAGE_OPTIONS", "{not json")
    with pytest.raises(StoreError, match="OSAE_STORAGE_OPTIONS is not valid JSON"):
        ActivationStore(url)


def test_s3_loader_reads_chunks_by_presigned_range_requests(moto):
    """The loader's chunk reads on S3 are plain GETs of presigned URLs, read into the chunk bins; the
    rows equal those of zarr's own reads."""
    endpoint, log = moto
    url = f"s3://{BUCKET}/ranged.zarr"
    make_store(url, **SMALL)
    store = ActivationStore(url)

    def epoch(**kw):
        cfg = LoaderConfig(batch_size=100, buffer_bytes=2 * 256 * 16 * 2, drop_last=False, seed=7, **kw)
        return np.concatenate([x.numpy().copy() for x in ShuffledLoader(store, HOOK, cfg).epoch_batches()])

    before = log.read_text(errors="replace")
    direct = epoch(read_workers=3)
    requests = log.read_text(errors="replace")[len(before) :]
    # moto's log lines, e.g. "GET /bucket/ranged.zarr/acts/.../c/0/0?AWSAccessKeyId=...&Signature=... HTTP/1.1" 206
    presigned = re.findall(rf"GET /{BUCKET}/ranged\.zarr/acts/\S*\?\S*Signature=\S* HTTP/1\.1\S*\" 206", requests)
    assert len(presigned) >= store.n_chunks, requests[-2000:]
    np.testing.assert_array_equal(direct, epoch(direct_reads=False, read_workers=1))


def test_missing_s3_store_is_a_clear_error(s3_server):
    with pytest.raises(StoreFormatError, match="no store at"):
        ActivationStore(f"s3://{BUCKET}/does-not-exist.zarr")


@pytest.mark.parametrize("compressor", ["none", "zstd"])
def test_copy_local_to_s3_to_local(s3_server, tmp_path, compressor):
    src = tmp_path / "src.zarr"
    data = make_store(src, **SMALL)
    remote = f"s3://{BUCKET}/copy-{compressor}.zarr"
    up = tools.copy(src, remote, compressor=compressor)
    assert up["ok"] and up["same_content"], up
    assert tools.info(remote)["compressor"] == compressor
    down = tools.copy(remote, tmp_path / "back.zarr")
    assert down["ok"] and down["same_content"], down
    assert down["fingerprint"] == up["fingerprint"] == tools.info(src)["fingerprint"]
    back = ActivationStore(tmp_path / "back.zarr")
    assert back.meta["compressor"] == compressor
    _assert_same_rows(back, data)
    # Copying onto an existing remote store needs overwrite, and then works.
    with pytest.raises(StoreError, match="already exists"):
        tools.copy(src, remote)
    again = tools.copy(src, remote, overwrite=True)
    assert again["ok"] and again["same_content"]


def test_a_copy_resharded_to_one_chunk_per_object_feeds_the_loader_the_same_rows(s3_server, tmp_path):
    src = tmp_path / "src.zarr"
    make_store(src, **SMALL)
    remote = f"s3://{BUCKET}/one-chunk-shards.zarr"
    report = tools.copy(src, remote, chunks_per_shard=1)
    assert report["ok"] and report["same_content"], report
    store, local = ActivationStore(remote), ActivationStore(src)
    assert store.shard_rows == store.chunk_rows == local.chunk_rows and local.shard_rows == 8 * local.chunk_rows
    shards = {k for k in _s3_keys(s3_server, f"one-chunk-shards.zarr/acts/{HOOK}/c/")}
    assert len(shards) == store.n_chunks  # one object per chunk

    def epoch(s):
        cfg = LoaderConfig(batch_size=100, buffer_bytes=2 * 256 * 16 * 2, drop_last=False, seed=2, read_workers=2)
        return np.concatenate([x.numpy().copy() for x in ShuffledLoader(s, HOOK, cfg).epoch_batches()])

    np.testing.assert_array_equal(epoch(store), epoch(local))
    back = tools.copy(remote, tmp_path / "back.zarr")  # keeps the source's layout
    assert back["same_content"] and ActivationStore(tmp_path / "back.zarr").shard_rows == store.chunk_rows
    r = _osae("store", "copy", str(src), f"s3://{BUCKET}/bad.zarr", "--chunks-per-shard", "0")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "--chunks-per-shard must be a positive" in r.stderr


def test_remote_writer_lease_excludes_a_second_writer(s3_server):
    url = f"s3://{BUCKET}/y.zarr"
    make_store(url, n_seqs=5, ctx=16, d=16, chunk_rows=256, seed=1)
    hooks = {HOOK: hook_spec(3, 16, "float16", "resid_post")}
    first = StoreWriter.create(url, hooks=hooks, has_tokens=False, chunk_rows=256, overwrite=True)
    try:
        assert "y.zarr/osae-writer.lease.json" in _s3_keys(s3_server, "y.zarr/")
        with pytest.raises(StoreLockedError, match="being written by"):
            StoreWriter.create(url, hooks=hooks, has_tokens=False, chunk_rows=256, overwrite=True)
        with pytest.raises(StoreLockedError):
            StoreWriter.resume(url)
        # The refused writers removed nothing: the holder still writes and commits.
        first.write({HOOK: np.ones((10, 16), np.float16)})
    finally:
        first.close()
    assert "y.zarr/osae-writer.lease.json" not in _s3_keys(s3_server, "y.zarr/")
    assert ActivationStore(url).n_tokens == 10
    second = StoreWriter.create(url, hooks=hooks, has_tokens=False, chunk_rows=256, overwrite=True)
    second.write({HOOK: np.full((3, 16), 2, np.float16)})
    second.close()
    store = ActivationStore(url)
    assert store.n_tokens == 3 and (store.read_acts(HOOK, 0, 3) == 2).all()


def test_an_expired_remote_lease_is_taken_over(s3_server):
    """A writer that died without releasing leaves a lease that stops counting once expired."""
    url = f"s3://{BUCKET}/abandoned.zarr"
    client = _s3_client(s3_server)
    hooks = {HOOK: hook_spec(3, 16, "float16", "resid_post")}
    lease = {"token": "dead", "holder": "pid 1 on gone", "expires": time.time() + 600}
    client.put_object(Bucket=BUCKET, Key="abandoned.zarr/osae-writer.lease.json", Body=json.dumps(lease).encode())
    with pytest.raises(StoreLockedError, match="pid 1 on gone"):
        StoreWriter.create(url, hooks=hooks, has_tokens=False, chunk_rows=256)
    lease["expires"] = time.time() - 1
    client.put_object(Bucket=BUCKET, Key="abandoned.zarr/osae-writer.lease.json", Body=json.dumps(lease).encode())
    w = StoreWriter.create(url, hooks=hooks, has_tokens=False, chunk_rows=256)
    w.write({HOOK: np.ones((4, 16), np.float16)})
    w.close()
    assert ActivationStore(url).n_tokens == 4
    assert "abandoned.zarr/osae-writer.lease.json" not in _s3_keys(s3_server, "abandoned.zarr/")


# -- HTTP (read-only) ----------------------------------------------------------------------------
def test_http_store_reads_verifies_and_reports_no_stored_size(http_store):
    url, path, data = http_store
    store = ActivationStore(url)
    _assert_same_rows(store, data)
    report = tools.verify(url)
    assert report["ok"], report["bad_chunks"]
    assert report["fingerprint"] == tools.info(path)["fingerprint"]
    meta = tools.info(url)
    assert meta["location"] == url and meta["n_tokens"] == N_ROWS
    assert meta["nbytes_stored"] is None and meta["nbytes_total"] is None and meta["compression_ratio"] is None
    assert meta["fingerprint"] == report["fingerprint"]


def test_http_store_feeds_the_shuffled_loader(http_store):
    url, _, data = http_store
    store = ActivationStore(url)
    cfg = LoaderConfig(batch_size=100, buffer_bytes=2 * 256 * 16 * 2, drop_last=False, prefetch_chunks=1, seed=3)
    loader = ShuffledLoader(store, HOOK, cfg, with_rows=True)
    seen, xs = [], []
    for x, rows in loader.epoch_batches():
        seen.append(np.asarray(rows).copy())
        xs.append(x.numpy().copy())
    rows = np.concatenate(seen)
    iv = split_intervals(store, "train")
    want = np.concatenate([np.arange(lo, hi) for lo, hi in zip(iv.lo, iv.hi)])
    assert len(rows) == len(want) == iv.n_rows > 0
    np.testing.assert_array_equal(np.sort(rows), want)  # every train row exactly once
    np.testing.assert_array_equal(np.concatenate(xs), data["acts"][HOOK][rows].astype(np.float32))
    assert not np.array_equal(rows, want), "rows come shuffled"


def test_remote_chunk_reads_in_parallel_give_the_same_stream_as_zarr(http_store):
    """Direct range reads with several in flight (the remote default) against one zarr read at a time."""
    url, _, _ = http_store
    store = ActivationStore(url)

    def epoch(**kw):
        cfg = LoaderConfig(batch_size=100, buffer_bytes=2 * 256 * 16 * 2, drop_last=False, seed=5, **kw)
        return np.concatenate([x.numpy().copy() for x in ShuffledLoader(store, HOOK, cfg).epoch_batches()])

    np.testing.assert_array_equal(epoch(read_workers=4), epoch(direct_reads=False, read_workers=1))


def test_a_flipped_byte_in_a_served_chunk_stops_the_loader_in_one_line(http_root):
    root, base = http_root
    make_store(root / "flipped.zarr", **SMALL)
    shard = root / "flipped.zarr" / "acts" / HOOK / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF  # inside chunk 0's rows
    shard.write_bytes(bytes(raw))
    store = ActivationStore(f"{base}/flipped.zarr")
    cfg = LoaderConfig(batch_size=100, split="all", buffer_bytes=2**20, read_workers=3)
    with pytest.raises(StoreError, match=r"cannot read chunk 0 of .*checksum mismatch; run `osae store verify`"):
        for _ in ShuffledLoader(store, HOOK, cfg).epoch_batches():
            pass


class _ForgetfulRangeHandler(_ReadOnlyRangeHandler):
    """HTTP/1.1 with ranges, but each connection is closed after one response without saying so (as
    servers close idle kept-alive connections); /gone/ is 404, ranged GETs under /busy/ are 503 and
    /moved/ redirects to the same path without it."""

    protocol_version = "HTTP/1.1"

    def send_head(self):
        if self.path.startswith("/gone/"):
            self.send_error(404)
            return None
        if self.path.startswith("/busy/") and self.headers.get("Range"):
            self.send_error(503, "try later")
            return None
        if self.path.startswith("/moved/"):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/moved"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return super().send_head()

    def handle_one_request(self):
        super().handle_one_request()
        self.close_connection = True


@pytest.fixture()
def forgetful_server(tmp_path):
    """(directory, base URL) served by _ForgetfulRangeHandler; busy/ holds a store."""
    make_store(tmp_path / "busy" / "s.zarr", **SMALL)
    with _serving(tmp_path, _ForgetfulRangeHandler) as base:
        yield tmp_path, base


def test_range_client_reconnects_follows_redirects_and_names_http_errors(forgetful_server):
    from osae.store.core.ranged import RangeClient

    root, base = forgetful_server
    blob = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8)
    (root / "blob").write_bytes(blob.tobytes())
    client = RangeClient(lambda name: name)
    for start in (0, 4096, 99_000):  # each on a connection the server has silently closed
        head, tail = bytearray(500), bytearray(7)
        client.read_into(f"{base}/blob", start, memoryview(head), memoryview(tail))
        assert bytes(head + tail) == blob[start : start + 507].tobytes()
    assert client.read_tail(f"{base}/moved/blob", 20) == blob[-20:].tobytes()
    with pytest.raises(FileNotFoundError):
        client.read_tail(f"{base}/gone/blob", 20)
    with pytest.raises(OSError, match="HTTP 503"):
        client.read_tail(f"{base}/busy/s.zarr/zarr.json", 20)
    with pytest.raises(EOFError):
        client.read_into(f"{base}/blob", 99_990, memoryview(bytearray(20)))


def test_fsspec_reads_remote_chunks_where_the_range_client_cannot_follow(monkeypatch, http_store):
    from osae.store.core.location import filesystem, parse_location
    from osae.store.core.ranged import range_client

    loc = parse_location(http_store[0])
    assert range_client(loc, filesystem(loc)) is not None
    monkeypatch.setenv("OSAE_STORAGE_OPTIONS", json.dumps({"headers": {"Authorization": "Bearer x"}}))
    assert range_client(loc, filesystem(loc)) is None  # headers the client would have to copy
    monkeypatch.delenv("OSAE_STORAGE_OPTIONS")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert range_client(loc, filesystem(loc)) is None  # fsspec's clients know the proxy


def test_http_errors_and_servers_without_ranges_stop_the_loader_in_one_line(forgetful_server):
    _, base = forgetful_server
    store = ActivationStore(f"{base}/busy/s.zarr")
    with pytest.raises(StoreError, match=r"cannot read chunk \d+ of .*HTTP 503.*; check the connection") as err:
        for _ in ShuffledLoader(store, HOOK, LoaderConfig(batch_size=100, read_workers=2)).epoch_batches():
            pass
    assert "\n" not in str(err.value)

    # plain SimpleHTTPRequestHandler ignores Range: every GET gets the whole file
    with _serving(forgetful_server[0], http.server.SimpleHTTPRequestHandler) as base:
        store = ActivationStore(f"{base}/busy/s.zarr")
        with pytest.raises(StoreError, match=r"ignores byte ranges; serve the store from a server that honours"):
            for _ in ShuffledLoader(store, HOOK, LoaderConfig(batch_size=100)).epoch_batches():
                pass


def test_writing_to_http_is_refused_as_read_only(http_root):
    _, base = http_root
    hooks = {HOOK: hook_spec(3, 16, "float16", "resid_post")}
    with pytest.raises(StoreError, match="read-only"):
        StoreWriter.create(f"{base}/new.zarr", hooks=hooks, has_tokens=False)
    with pytest.raises(StoreError, match="read-only"):
        StoreWriter.resume(f"{base}/served.zarr")
    assert not (http_root[0] / "new.zarr").exists()


def test_unreachable_url_fails_fast_with_one_line(closed_port):
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        ActivationStore(f"http://127.0.0.1:{closed_port}/x.zarr")
    assert time.monotonic() - t0 < 30
    msg = str(err.value)
    assert "\n" not in msg and f"127.0.0.1:{closed_port}" in msg


# -- CLI as real subprocesses ----------------------------------------------------------------------
def test_cli_info_s3_and_verify_http(s3_server, http_store):
    url = f"s3://{BUCKET}/cli.zarr"
    make_store(url, **SMALL)
    r = _osae("store", "info", url, "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    assert meta["n_tokens"] == N_ROWS and meta["location"] == url and meta["nbytes_stored"] > 0
    r = _osae("store", "info", url)
    assert r.returncode == 0, r.stderr
    assert url in r.stdout and f"fingerprint  {meta['fingerprint']}" in r.stdout

    http_url, _, _ = http_store
    r = _osae("store", "verify", http_url)
    assert r.returncode == 0, r.stderr
    assert f"checked 16 chunks of {N_ROWS:,} tokens: ok" in r.stdout


def test_cli_unreachable_url_is_one_error_line(closed_port):
    r = _osae("store", "info", f"http://127.0.0.1:{closed_port}/x.zarr", timeout=60)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("osae: error:"), r.stderr
