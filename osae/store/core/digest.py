"""Per-chunk content digests and the store fingerprint.

Every committed chunk of every row array has a blake2b-64 digest of its raw little-endian bytes in
`digests/<array path>`. The fingerprint hashes those digests with the shapes and dtypes, so it is cheap to
compute from the manifest alone, identical for a recompressed copy, and different for any other content.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np


def chunk_digest(rows: np.ndarray) -> int:
    data = np.ascontiguousarray(rows)
    if data.dtype.byteorder == ">":
        data = data.byteswap().view(data.dtype.newbyteorder("<"))
    return int.from_bytes(hashlib.blake2b(data.tobytes(), digest_size=8).digest(), "little")


def chunk_digests(rows: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Digests of consecutive chunk-sized pieces of `rows` (the first piece starts a chunk)."""
    n = len(rows)
    out = np.empty(-(-n // chunk_rows), dtype=np.uint64)
    for i, start in enumerate(range(0, n, chunk_rows)):
        out[i] = chunk_digest(rows[start : start + chunk_rows])
    return out


def fingerprint(meta: dict, manifest: dict[str, np.ndarray]) -> str:
    """A 128-bit hex fingerprint of a store's committed content (see module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    header = {
        "n_tokens": meta["commit"]["n_tokens"],
        "chunk_rows": meta["chunk_rows"],
        "hooks": {k: [v["d_model"], v["dtype"]] for k, v in sorted(meta["hooks"].items())},
        "arrays": sorted(manifest),
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    for path in sorted(manifest):
        h.update(path.encode())
        h.update(np.ascontiguousarray(manifest[path], dtype="<u8").tobytes())
    return h.hexdigest()


def file_sha256(path) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
