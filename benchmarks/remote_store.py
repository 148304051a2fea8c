"""The loader on a remote store, against one sequential stream of the same bytes (issue #12).

One run, against two servers on loopback, each in its own process:
- moto's S3 server (the one the tests use), with the store copied to s3://;
- a static HTTP server that answers byte ranges by reading just those bytes (as S3, nginx or a CDN do).
  moto does not: it handles every request, even a 4 KiB range, by going through the whole object, so there
  a chunk read costs about as much as fetching its whole 128 MiB shard, which no real S3 does.
For each: the ceiling is one client fetching every activation object whole, one after another, in two
ways: fsspec `cat_file` (the usual client library) and a plain http.client reader, written here, that
reads each whole object from the socket into one reused buffer (as the loader's chunk reads do); the
faster of the two is the ceiling. Then a new loader for each `--workers` value (chunk reads in flight at
once) and each `--clients` value (the loader's chunk reads through osae's range client, or through fsspec
as before it) runs two shuffled epochs of the train split: the first one's rate is reported apart (it
pays for mapping the loader's buffers and opening connections), the second is the steady state.
Rounds alternate stream and loader so that drift of the shared machine hits both.

    python benchmarks/remote_store.py --mib 1024 --workers 1,2,4 --rounds 3 --moto-chunks-per-shard 1 \
        --out /tmp/remote.json

The rate counts stored activation bytes delivered (the loader's train split only; the stream reads every
row), so the ratio compares rates, not totals.
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from statistics import fmean

HOOK = "blocks.3.hook_resid_post"
BUCKET = "osae-bench"
D = 1024
ROW_BYTES = D * 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    wait_for(port, proc, log)
    return proc, f"http://127.0.0.1:{port}"


def wait_for(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start; see {log}")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files; a `Range: bytes=a-b` request reads only those bytes."""

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        rng = self.headers.get("Range")
        if not rng or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        a, b = rng.strip().removeprefix("bytes=").split("-")
        start, end = (size - int(b), size - 1) if a == "" else (int(a), min(int(b) if b else size - 1, size - 1))
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(f.read(end - start + 1))


def serve_http(root: str, port: int) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), partial(RangeHandler, directory=root))
    server.serve_forever()


def start_http(root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-http", str(root), str(port), "--out", "-"],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    wait_for(port, proc, log)
    return proc, f"http://127.0.0.1:{port}"


def stream_once(fs, keys: list[str]) -> tuple[float, float]:
    """(GB/s, client CPU-s per GB) of fsspec fetching every object whole."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    total = sum(len(fs.cat_file(k)) for k in keys) / 1e9
    return total / (time.perf_counter() - t0), (time.process_time() - cpu0) / total


class SocketReader:
    """The ceiling's second client, written here independently of osae: one kept-alive http.client
    connection, each GET's body read from the socket into the caller's buffer. S3 keys are read through
    presigned URLs from s3fs (what a plain HTTP client of S3 does)."""

    def __init__(self, fs):
        self.fs, self.conns = fs, {}

    def read_into(self, key: str, start: int, view: memoryview) -> None:
        import http.client
        from urllib.parse import urlsplit

        url = key if "://" in key else self.fs.sign(f"s3://{key}", expiration=3600)
        parts = urlsplit(url)
        if parts.netloc not in self.conns:
            self.conns[parts.netloc] = http.client.HTTPConnection(parts.netloc, timeout=60)
        conn = self.conns[parts.netloc]
        conn.request("GET", f"{parts.path}?{parts.query}", headers={"Range": f"bytes={start}-{start + len(view) - 1}"})
        resp = conn.getresponse()
        assert resp.status == 206, (resp.status, resp.reason)
        done = 0
        while done < len(view):
            got = resp.readinto(view[done:])
            assert got, "short response"
            done += got


def raw_stream_once(fs, keys: list[str]) -> tuple[float, float]:
    """(GB/s, client CPU-s per GB) of SocketReader fetching every object whole into one reused buffer."""
    reader = SocketReader(fs)
    sizes = [fs.size(k) for k in keys]
    buf = memoryview(bytearray(max(sizes)))
    t0, cpu0 = time.perf_counter(), time.process_time()
    for key, size in zip(keys, sizes):
        reader.read_into(key, 0, buf[:size])
    total = sum(sizes) / 1e9
    return total / (time.perf_counter() - t0), (time.process_time() - cpu0) / total


def _timed_epoch(ld) -> dict:
    t0, cpu0 = time.perf_counter(), time.process_time()
    it = ld.epoch_batches()
    rows = len(next(it))
    first = time.perf_counter() - t0
    rows += sum(len(x) for x in it)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    gb = rows * ROW_BYTES / 1e9
    return {"gb_s": gb / seconds, "cpu_s_per_gb": cpu / gb, "first_batch_s": first}


def loader_once(url: str, workers: int, client: str = "socket") -> dict:
    """Two shuffled epochs of one new loader: the first pays for mapping its buffers and opening its
    connections, the second is the steady state a longer run sees. client "fsspec" reads the same chunk
    ranges through fsspec's cat_file (the loader's remote path before osae's range client)."""
    from osae.store import ActivationStore, LoaderConfig, ShuffledLoader

    store = ActivationStore(url)
    ld = ShuffledLoader(store, HOOK, LoaderConfig(batch_size=4096, read_workers=workers, buffer_bytes=2**28))
    if client == "fsspec":
        make_reader = ld._direct_reader

        def fsspec_reader():
            reader = make_reader()
            reader.ranged = None
            return reader

        ld._direct_reader = fsspec_reader
    first, steady = _timed_epoch(ld), _timed_epoch(ld)
    return {
        "workers": workers,
        "client": client,
        **steady,
        "first_epoch": first,
    }


def _summary(rows: list[dict], stream: float) -> dict:
    """Means over rounds of one loader setting, its steady state and its first epoch, against the ceiling."""
    steady, first = fmean(r["gb_s"] for r in rows), fmean(r["first_epoch"]["gb_s"] for r in rows)
    return {
        "gb_s": steady,
        "vs_stream": steady / stream,
        "cpu_s_per_gb": fmean(r["cpu_s_per_gb"] for r in rows),
        "first_epoch_gb_s": first,
        "first_epoch_vs_stream": first / stream,
        "first_batch_s": fmean(r["first_epoch"]["first_batch_s"] for r in rows),
    }


def range_cost(fs, key: str, chunk_bytes: int = 16 * 2**20, repeats: int = 6) -> dict:
    """Seconds per request: one chunk-sized range against the whole object. On a server that reads only
    the range the first is a fraction of the second; moto copies the whole object first."""
    reader = SocketReader(fs)
    size = fs.size(key)
    buf = memoryview(bytearray(size))
    timings = {}
    for label, nbytes in (("chunk_range_s", chunk_bytes), ("whole_object_s", size)):
        t0 = time.perf_counter()
        for i in range(repeats):
            reader.read_into(key, (i * chunk_bytes) % (size - nbytes + 1), buf[:nbytes])
        timings[label] = (time.perf_counter() - t0) / repeats
    return {"object_mib": size / 2**20, **timings}


def measure(fs, keys: list[str], url: str, workers: list[int], rounds: int, clients: list[str]) -> dict:
    result: dict = {"stream_gb_s": [], "raw_stream_gb_s": [], "stream_cpu_s_per_gb": [], "loader": []}
    result["range_cost"] = range_cost(fs, keys[0])
    print(f"{url}: {json.dumps(result['range_cost'])}", file=sys.stderr)
    for _ in range(rounds):
        (fsspec_rate, fsspec_cpu), (raw_rate, raw_cpu) = stream_once(fs, keys), raw_stream_once(fs, keys)
        result["stream_gb_s"].append(fsspec_rate)
        result["raw_stream_gb_s"].append(raw_rate)
        result["stream_cpu_s_per_gb"].append({"fsspec": fsspec_cpu, "socket reader": raw_cpu})
        print(
            f"{url}: stream {fsspec_rate:.3f} GB/s, {fsspec_cpu:.2f} CPU-s/GB (fsspec); "
            f"{raw_rate:.3f} GB/s, {raw_cpu:.2f} CPU-s/GB (socket reader)",
            file=sys.stderr,
        )
        for w in workers:
            for client in clients:
                result["loader"].append(loader_once(url, w, client))
                print(json.dumps(result["loader"][-1]), file=sys.stderr)
    stream = max(sum(result["stream_gb_s"]), sum(result["raw_stream_gb_s"])) / rounds
    result["ceiling_gb_s"] = stream
    groups: dict[str, list[dict]] = {}
    for row in result["loader"]:
        groups.setdefault(f"{row['client']}, {row['workers']} in flight", []).append(row)

    result["summary"] = {name: _summary(rows, stream) for name, rows in groups.items()}
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--servers", default="http,moto")
    ap.add_argument("--clients", default="socket,fsspec", help="loader chunk reads: socket (osae's), fsspec")
    ap.add_argument(
        "--moto-chunks-per-shard", type=int, default=None, help="reshard the S3 copy (default: keep, 8 per shard)"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--serve-http", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_http:
        serve_http(args.serve_http[0], int(args.serve_http[1]))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    import fsspec
    from big_store import build_store  # the same synthetic rows as the larger-than-memory benchmark

    from osae.store import copy_store

    work = Path(tempfile.mkdtemp(prefix="osae-remote-"))
    workers = [int(x) for x in args.workers.split(",")]
    clients = args.clients.split(",")
    build_store(work / "served" / "store", args.mib * 2**20 // ROW_BYTES)
    local_keys = sorted(
        p.relative_to(work / "served").as_posix()
        for p in (work / "served" / "store" / "acts" / HOOK).rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "store_mib": sum((work / "served" / k).stat().st_size for k in local_keys) / 2**20,
    }
    procs = []
    try:
        if "http" in args.servers:
            proc, base = start_http(work / "served", work / "http.log")
            procs.append(proc)
            fs = fsspec.filesystem("http")
            result["http"] = measure(
                fs, [f"{base}/{k}" for k in local_keys], f"{base}/store", workers, args.rounds, clients
            )
        if "moto" in args.servers:
            import s3fs

            proc, endpoint = start_moto(work / "moto.log")
            procs.append(proc)
            os.environ.update(
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_ENDPOINT_URL=endpoint,
            )
            fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
            fs.mkdir(BUCKET)
            url = f"s3://{BUCKET}/store"
            copy_store(str(work / "served" / "store"), url, chunks_per_shard=args.moto_chunks_per_shard)
            prefix = f"{BUCKET}/store/acts/{HOOK}/c/"
            keys = sorted(k for k in fs.find(prefix) if not k.endswith("zarr.json"))
            result["moto_chunks_per_shard"] = args.moto_chunks_per_shard or 8
            result["moto"] = measure(fs, keys, url, workers, args.rounds, clients)
        args.out.write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v["summary"] for k, v in result.items() if isinstance(v, dict)}, indent=2))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
