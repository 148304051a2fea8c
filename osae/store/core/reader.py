"""Open an osae store read-only and read committed rows, chunk by chunk.

Readers only ever see committed rows: the commit record in the root attributes is written after the
rows it covers, so rows beyond `n_tokens` may exist on disk but are never returned.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import zarr
from zarr.core.buffer import default_buffer_prototype

from osae.constants import (
    ACTS_GROUP,
    GROUND_TRUTH_GROUP,
    READABLE_STORE_FORMATS,
    STORE_ATTR_KEY,
    STORE_FORMAT_VERSION,
)
from osae.errors import StoreError, StoreFormatError
from osae.store.core.format import storage_dtype
from osae.store.core.ground_truth import CODE_INDICES, DENSE_CODES, code_layout, densify, read_sparse_codes
from osae.store.core.location import Location, parse_location, zarr_store

log = logging.getLogger(__name__)


def open_group(loc: Location, *, read_only: bool = True) -> zarr.Group:
    """Open the store's root group, turning every way it can fail into one clear StoreError."""
    try:
        store = zarr_store(loc, read_only=read_only)
        group = zarr.open_group(store=store, mode="r" if read_only else "r+", zarr_format=3)
    except StoreError:
        raise
    except FileNotFoundError:
        if loc.is_local and os.path.exists(loc.path):
            raise StoreFormatError(f"{loc.display} is not an osae store (no Zarr v3 group there)") from None
        raise StoreFormatError(f"no store at {loc.display}: the path does not exist") from None
    except Exception as exc:  # zarr, fsspec and aiohttp raise many types; all mean "cannot open"
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if "GroupNotFound" in type(exc).__name__ or "NodeType" in type(exc).__name__:
            raise StoreFormatError(f"{loc.display} is not an osae store (no Zarr v3 group there)") from None
        raise StoreError(f"cannot open {loc.display}: {type(exc).__name__}: {reason}") from None
    return group


def read_metadata(group: zarr.Group, loc: Location) -> dict:
    meta = group.attrs.get(STORE_ATTR_KEY)
    if not isinstance(meta, dict):
        raise StoreFormatError(f"{loc.display} is a Zarr group but not an osae store (no '{STORE_ATTR_KEY}' attribute)")
    version = meta.get("format_version")
    if version not in READABLE_STORE_FORMATS:
        raise StoreFormatError(
            f"{loc.display} has store format version {version}; this osae reads version "
            f"{STORE_FORMAT_VERSION}; upgrade osae or re-harvest the store"
        )
    return meta


def to_torch(rows: np.ndarray, dtype: str) -> torch.Tensor:
    """A zero-copy torch view of stored rows in their logical dtype (bfloat16 from its uint16 bits)."""
    if dtype == "bfloat16":
        return torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(rows)


def to_float32(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows as float32 numpy (bfloat16 bits are widened exactly)."""
    if dtype == "bfloat16":
        return (rows.astype(np.uint32) << 16).view(np.float32)
    return rows.astype(np.float32)


class ActivationStore:
    """A read-only view of a store's committed rows.

    Chunk c of every row array covers rows [c * chunk_rows, (c + 1) * chunk_rows); the last chunk may
    be partial. `read_chunk` is the unit of I/O: whole chunks were 3-30x faster than large slices.
    """

    def __init__(self, url, *, quiet: bool = False):
        self.loc = parse_location(url)
        self.group = open_group(self.loc)
        self.meta = read_metadata(self.group, self.loc)
        self._arrays: dict[str, zarr.Array] = {}
        self._prototype = default_buffer_prototype()
        if not self.complete and not quiet:
            log.warning(
                "%s is not complete (still being written, or interrupted): reading its %d committed rows",
                self.loc.display,
                self.n_tokens,
            )

    # -- metadata -----------------------------------------------------------------------------
    @property
    def commit(self) -> dict:
        return self.meta["commit"]

    @property
    def n_tokens(self) -> int:
        return int(self.commit["n_tokens"])

    @property
    def n_sequences(self) -> int:
        return int(self.commit["n_sequences"])

    @property
    def complete(self) -> bool:
        return bool(self.commit["complete"])

    @property
    def provenance(self) -> dict:
        """Where the rows came from (model, dataset, the writer's own records), as the writer recorded it."""
        return self.meta.get("provenance") or {}

    @property
    def hooks(self) -> dict[str, dict]:
        return self.meta["hooks"]

    @property
    def chunk_rows(self) -> int:
        return int(self.meta["chunk_rows"])

    @property
    def shard_rows(self) -> int:
        return int(self.meta["shard_rows"])

    @property
    def has_tokens(self) -> bool:
        return bool(self.meta["has_tokens"])

    @property
    def context_size(self) -> int | None:
        return self.meta.get("context_size")

    @property
    def n_chunks(self) -> int:
        return -(-self.n_tokens // self.chunk_rows)

    def refresh(self) -> None:
        """Re-read the commit record (a writer may have committed more rows since opening)."""
        self.group = open_group(self.loc)
        self.meta = read_metadata(self.group, self.loc)
        self._arrays.clear()

    def resolve_hook(self, hook: str | None) -> str:
        """The hook to read: the given one, or the only one. Raises with the valid names otherwise."""
        names = sorted(self.hooks)
        if hook is None:
            if len(names) == 1:
                return names[0]
            raise StoreError(f"{self.loc.display} holds several hooks {names}; choose one with --hook")
        if hook not in self.hooks:
            by_layer = [n for n in names if str(self.hooks[n].get("layer")) == hook]
            if len(by_layer) == 1:
                return by_layer[0]
            raise StoreError(f"{self.loc.display} has no hook '{hook}'; it holds {names}")
        return hook

    def sequence_starts(self) -> np.ndarray:
        """First row of every committed sequence (sequences/row_start[:n_sequences]), increasing."""
        if not self.has_tokens or not self.n_sequences:
            return np.empty(0, np.int64)
        return np.asarray(self.array("sequences/row_start")[: self.n_sequences], np.int64)

    def sequence_of_rows(self, rows: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
        """Sequence number (the index into sequences/*) of each row. Sequences are found through row_start
        only (store-format.md); `seq_id` values are information for users and need not be indices."""
        starts = self.sequence_starts() if starts is None else starts
        return np.searchsorted(starts, np.asarray(rows), side="right") - 1

    def d_model(self, hook: str) -> int:
        return int(self.hooks[hook]["d_model"])

    def dtype(self, hook: str) -> str:
        return self.hooks[hook]["dtype"]

    def chunk_bounds(self, c: int) -> tuple[int, int]:
        start = c * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n_tokens)

    # -- arrays -------------------------------------------------------------------------------
    def array(self, path: str) -> zarr.Array:
        if path not in self._arrays:
            try:
                self._arrays[path] = self.group[path]
            except KeyError:
                raise StoreFormatError(
                    f"{self.loc.display} has no array '{path}' (damaged or incomplete store)"
                ) from None
        return self._arrays[path]

    def acts(self, hook: str) -> zarr.Array:
        return self.array(f"{ACTS_GROUP}/{hook}")

    def read_rows(self, path: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of a row array, clipped to the committed rows. Decodes into `out` if given."""
        stop = min(stop, self.n_tokens)
        if stop <= start:
            arr = self.array(path)
            return np.empty((0, *arr.shape[1:]), dtype=arr.dtype)
        arr = self.array(path)
        try:
            if out is None:
                return arr[start:stop]
            target = out[: stop - start]
            arr.get_basic_selection(slice(start, stop), out=self._prototype.nd_buffer.from_numpy_array(target))
            return target
        except (StoreError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a failed checksum, a damaged shard or a lost connection
            hint = "run `osae store verify` on it"
            if self.loc.protocol in ("http", "https"):
                # A server that ignores Range headers returns whole shards where zarr asked for byte ranges.
                hint += (
                    ", and check that the server honours HTTP Range requests (plain `python -m http.server` does not)"
                )
            raise StoreError(
                f"cannot read rows {start}:{stop} of '{path}' in {self.loc.display} "
                f"({type(exc).__name__}: {str(exc)[:160]}); {hint}"
            ) from exc

    def read_chunk(self, path: str, c: int, out: np.ndarray | None = None) -> np.ndarray:
        start, stop = self.chunk_bounds(c)
        return self.read_rows(path, start, stop, out)

    def read_acts(self, hook: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        return self.read_rows(f"{ACTS_GROUP}/{hook}", start, stop, out)

    def empty_rows(self, hook: str, n: int) -> np.ndarray:
        return np.empty((n, self.d_model(hook)), dtype=storage_dtype(self.dtype(hook)))

    # -- statistics ---------------------------------------------------------------------------
    def stats(self, hook: str) -> dict:
        """Per-dimension mean and variance and the mean squared norm, from the running sums in the commit."""
        s = self.commit["stats"][hook]
        n = max(int(s["count"]), 1)
        mean = np.asarray(s["sum"], dtype=np.float64) / n
        mean_sq = np.asarray(s["sum_sq"], dtype=np.float64) / n
        return {
            "count": int(s["count"]),
            "mean": mean,
            "var": np.maximum(mean_sq - mean**2, 0.0),
            "mean_sq_norm": float(mean_sq.sum()),
        }

    # -- ground truth (synthetic stores) ------------------------------------------------------
    @property
    def ground_truth_names(self) -> list[str]:
        """Names of the arrays under ground_truth/ (empty for a store without ground truth)."""
        return list((self.meta.get("ground_truth") or {}).get("arrays", []))

    def ground_truth(self, names: list[str] | None = None) -> dict[str, np.ndarray] | None:
        """Ground-truth arrays of a synthetic store (e.g. dictionary, prior), or None.

        `names` picks arrays (those the store lacks are left out); all by default, which loads the true codes
        whole. Read codes by row range with `ground_truth_codes` instead."""
        if "ground_truth" not in self.meta:
            return None
        gt = self.group[GROUND_TRUTH_GROUP]
        wanted = self.ground_truth_names if names is None else [n for n in names if n in self.ground_truth_names]
        return {name: gt[name][...] for name in wanted}

    def ground_truth_codes(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """True codes of rows [start, stop) (clipped to the stored rows) as sparse rows: indices (r, m) int32,
        increasing within a row, and values (r, m) float32. Also reads stores with dense codes."""
        if "ground_truth" not in self.meta:
            raise StoreFormatError(f"{self.loc.display} has no ground truth (only synthetic stores have one)")
        # A dense store is sparsified to the active count its generator recorded.
        m = (self.meta["ground_truth"].get("config") or {}).get("m")
        stop = self.ground_truth_rows if stop is None else min(stop, self.ground_truth_rows)
        gt = self.group[GROUND_TRUTH_GROUP]
        return read_sparse_codes(gt, self.ground_truth_names, m, start, max(start, stop))

    def ground_truth_dense_codes(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """True codes of rows [start, stop) as dense (r, K) float32 (K = the ground-truth dictionary's atoms)."""
        indices, values = self.ground_truth_codes(start, stop)
        return densify(indices, values, self.group[f"{GROUND_TRUTH_GROUP}/dictionary"].shape[0])

    @property
    def ground_truth_rows(self) -> int:
        """Rows of true codes (0 without them): the store's rows, training then held-out."""
        layout = code_layout(self.ground_truth_names)
        if layout is None:
            return 0
        return int(self.group[f"{GROUND_TRUTH_GROUP}/{CODE_INDICES if layout == 'sparse' else DENSE_CODES}"].shape[0])
