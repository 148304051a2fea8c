"""Read uncompressed chunks straight into a caller's buffer, bypassing zarr.

For the default layout (sharding, raw little-endian chunks each followed by a crc32c) a chunk is a byte
range of its shard file. Locally, one `preadv` puts the chunk's bytes directly into the destination rows and
its checksum into a 4-byte buffer; the checksum is then verified. This avoids zarr's fresh 16 MiB allocation
per chunk (first-touch page faults were the loader's largest cost on this machine) and its event loop.
On a remote store (s3://, http(s)://) each shard's index is fetched once and kept, so a chunk costs one
range request where zarr makes two (index and chunk); requests are independent, so readers can overlap
them. The request's body is read from the socket into the destination (`ranged.RangeClient`), or through
fsspec where that cannot be done. Anything else (compressed chunks, another codec chain) goes through zarr.
"""

from __future__ import annotations

import os
import struct

import google_crc32c
import numpy as np

from osae.errors import StoreError, UsageError
from osae.store.core.location import filesystem, join
from osae.store.core.ranged import RangeUnsupported, range_client
from osae.store.core.reader import ActivationStore

_EMPTY = np.uint64(2**64 - 1)


def direct_layout(store: ActivationStore, path: str) -> dict | None:
    """The shard geometry of `path` if its chunks can be read directly, else None."""
    arr = store.array(path)
    codecs = arr.metadata.to_dict().get("codecs", ())
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    conf = codecs[0]["configuration"]
    inner = [c.get("name") for c in conf["codecs"]]
    index = [c.get("name") for c in conf["index_codecs"]]
    if inner != ["bytes", "crc32c"] or index != ["bytes", "crc32c"] or conf.get("index_location", "end") != "end":
        return None
    if conf["codecs"][0].get("configuration", {}).get("endian", "little") != "little" and arr.dtype.itemsize > 1:
        return None
    chunk_rows = int(conf["chunk_shape"][0])
    shard_rows = int(arr.metadata.chunk_grid.chunk_shape[0])
    row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
    return {
        "dir": join(store.loc, path, "c"),
        "chunk_rows": chunk_rows,
        "chunks_per_shard": shard_rows // chunk_rows,
        "chunk_bytes": chunk_rows * row_bytes,
        "row_bytes": row_bytes,
        "tail": "/0" * (len(arr.shape) - 1),
    }


class DirectChunkReader:
    """`read_chunk_into(c, out)`: chunk c of one row array into `out` (a C-contiguous chunk-sized buffer).
    Safe to call from several threads at once."""

    def __init__(self, store: ActivationStore, path: str, layout: dict, verify: bool = True):
        self.store, self.path, self.lay, self.verify = store, path, layout, verify
        self.remote = None if store.loc.is_local else filesystem(store.loc)
        self.ranged = None if self.remote is None else range_client(store.loc, self.remote)
        # remote shard -> its (chunks, 2) index; two threads may both fetch one, which costs a request, not
        # correctness, so no lock
        self._indexes: dict[str, np.ndarray] = {}
        self.index_bytes = 16 * layout["chunks_per_shard"] + 4  # (offset, nbytes) per chunk + crc32c

    def read_chunk_into(self, c: int, out: np.ndarray) -> None:
        lay = self.lay
        shard, j = divmod(c, lay["chunks_per_shard"])
        fname = f"{lay['dir']}/{shard}{lay['tail']}"
        flat = out.reshape(-1).view(np.uint8)
        if flat.nbytes != lay["chunk_bytes"]:
            raise UsageError(f"buffer has {flat.nbytes} bytes, a chunk has {lay['chunk_bytes']}")
        crc = self._read_local(c, fname, j, flat) if self.remote is None else self._read_remote(c, fname, j, flat)
        if self.verify and crc != google_crc32c.extend(0, flat):
            raise self._corrupt(c, "checksum mismatch")

    def _index(self, c: int, raw: bytes) -> np.ndarray:
        if self.verify and struct.unpack("<I", raw[-4:])[0] != google_crc32c.value(raw[:-4]):
            raise self._corrupt(c, "shard index checksum mismatch")
        return np.frombuffer(raw[:-4], "<u8").reshape(self.lay["chunks_per_shard"], 2)

    def _chunk_range(self, c: int, index: np.ndarray, j: int) -> int:
        offset, nbytes = index[j]
        if offset == _EMPTY or int(nbytes) != self.lay["chunk_bytes"] + 4:
            raise self._corrupt(c, "chunk missing from its shard or of the wrong size")
        return int(offset)

    def _missing(self, c: int, fname: str) -> StoreError:
        return StoreError(
            f"chunk {c} of '{self.path}' in {self.store.loc.display} is missing (no {fname}); "
            f"run `osae store verify` on it"
        )

    def _read_local(self, c: int, fname: str, j: int, flat: np.ndarray) -> int:
        try:
            fd = os.open(fname, os.O_RDONLY)
        except FileNotFoundError:
            raise self._missing(c, fname) from None
        try:
            raw = os.pread(fd, self.index_bytes, os.fstat(fd).st_size - self.index_bytes)
            offset = self._chunk_range(c, self._index(c, raw), j)
            crc = bytearray(4)
            if os.preadv(fd, [memoryview(flat), crc], offset) != self.lay["chunk_bytes"] + 4:
                raise self._corrupt(c, "shard file is truncated")
            return struct.unpack("<I", crc)[0]
        finally:
            os.close(fd)

    def _read_remote(self, c: int, fname: str, j: int, flat: np.ndarray) -> int:
        try:
            index = self._indexes.get(fname)
            if index is None:
                index = self._index(c, self._tail(fname))
                self._indexes[fname] = index
            offset = self._chunk_range(c, index, j)
            return self._range_into(fname, offset, flat)
        except FileNotFoundError:
            raise self._missing(c, fname) from None
        except EOFError:
            raise self._corrupt(c, "shard object is truncated") from None
        except RangeUnsupported as exc:
            raise StoreError(
                f"cannot read chunk {c} of '{self.path}' from {self.store.loc.display}: {exc}; serve the store "
                f"from a server that honours HTTP Range requests (plain `python -m http.server` does not)"
            ) from None
        except OSError as exc:  # refused, reset, timed out, or an HTTP error status
            raise StoreError(
                f"cannot read chunk {c} of '{self.path}' from {self.store.loc.display}: {exc}; "
                f"check the connection and run the command again"
            ) from None

    def _tail(self, fname: str) -> bytes:
        if self.ranged is not None:
            return self.ranged.read_tail(fname, self.index_bytes)
        size = self.remote.size(fname)
        return self.remote.cat_file(fname, start=size - self.index_bytes, end=size)

    def _range_into(self, fname: str, offset: int, flat: np.ndarray) -> int:
        """Chunk bytes into `flat`; returns the stored crc32c that follows them."""
        if self.ranged is not None:
            crc = bytearray(4)
            self.ranged.read_into(fname, offset, memoryview(flat), memoryview(crc))
            return struct.unpack("<I", crc)[0]
        data = self.remote.cat_file(fname, start=offset, end=offset + self.lay["chunk_bytes"] + 4)
        if len(data) != self.lay["chunk_bytes"] + 4:
            raise EOFError(fname)
        flat[:] = np.frombuffer(data, np.uint8, count=self.lay["chunk_bytes"])
        return struct.unpack("<I", data[-4:])[0]

    def _corrupt(self, c: int, what: str) -> StoreError:
        return StoreError(
            f"cannot read chunk {c} of '{self.path}' in {self.store.loc.display}: {what}; run `osae store verify` on it"
        )
