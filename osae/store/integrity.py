"""`osae store verify`: read every chunk of every array of a store and report each bad chunk once.

What is checked (docs/store-format.md section 5), one chunk at a time so memory stays at about one chunk:
- every array the format defines: the row arrays (acts/<hook>, tokens, seq_id, position), their digests
  (digests/<path>), sequences/row_start and sequences/context, and ground_truth/<name>. Reading a chunk through
  zarr checks its crc32c (and, in a sharded array, the crc32c of its shard's index);
- each committed chunk of a row array against its recorded blake2b-64 digest, and acts/* for NaN/Inf rows;
- an unsharded chunk that reads back as all fill values against its file: those arrays write every chunk, so
  no file there means a lost chunk (zarr silently reads an absent chunk as fill values);
- the running statistics of the commit record against statistics recomputed from the rows.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import zarr

from osae.constants import ACTS_GROUP, DIGESTS_GROUP, GROUND_TRUTH_GROUP, SEQUENCES_GROUP
from osae.progress import progress as progress_bar
from osae.store.core.digest import chunk_digest, fingerprint
from osae.store.core.layout import row_paths
from osae.store.core.location import filesystem, join
from osae.store.core.reader import ActivationStore
from osae.store.core.stats import merge_stats, row_stats

log = logging.getLogger(__name__)

# zarr's Crc32cCodec raises a plain ValueError with this text: the only way to tell a checksum failure apart.
CRC32C_MESSAGE = "checksum do not match"
# Recomputed sums differ from the writer's only by float64 rounding (another summation order): at most about
# n * 2^-53 relative for n rows, far below this for any store, and far above it for an altered number.
STATS_RTOL = 1e-6


@dataclass
class Finding:
    """One bad chunk (or, with `chunk` None, a bad array): which, what kind of problem, and a sentence for users.

    `chunk` is the chunk's index along the first axis, or its grid coordinates for an array chunked along
    several axes. `kind` is one of: checksum, digest, missing, nonfinite, unreadable, statistics."""

    array: str
    chunk: int | list[int] | None
    kind: str
    reason: str


def finding_line(finding: dict) -> str:
    """The finding as one whole line: the array, the chunk and what is wrong."""
    chunk = finding["chunk"]
    if chunk is None:
        return f"{finding['array']}: {finding['reason']}"
    label = str(chunk) if isinstance(chunk, int) else "(" + ", ".join(map(str, chunk)) + ")"
    return f"{finding['array']} chunk {label}: {finding['reason']}"


def check_store(store: ActivationStore, *, progress: bool = False) -> dict:
    """Check every chunk of every array of `store`; the report `osae store verify` prints (see module docstring)."""
    return _Verifier(store).run(progress)


@dataclass
class _Plan:
    """One array to check: its zarr array, how many entries along its first axis carry meaning, and a handler
    for each chunk's data once read (None: reading it, with its crc32c, is the whole check)."""

    path: str
    array: zarr.Array
    n_valid: int
    on_chunk: Callable[[tuple[int, ...], tuple[slice, ...], np.ndarray], None] | None = None


class _Verifier:
    def __init__(self, store: ActivationStore):
        self.store = store
        self.findings: list[Finding] = []
        self.rows = row_paths(store.meta)
        self.n_chunks = store.n_chunks
        # Recorded digest of every committed chunk of every row array; None where it is missing or unreadable.
        self.recorded: dict[str, list[int | None]] = {p: [None] * self.n_chunks for p in self.rows}
        self.recomputed = {h: _zero_stats(store.d_model(h)) for h in store.hooks}
        self.stats_known = {h: True for h in store.hooks}
        self.checked_rows = 0
        self.checked_other = 0
        self._fs = None

    def bad(self, path: str, chunk, kind: str, reason: str) -> None:
        self.findings.append(Finding(path, chunk, kind, reason))

    # -- the run -------------------------------------------------------------------------------
    def run(self, progress: bool) -> dict:
        digests, others = self._digest_plans(), self._other_plans()
        row_arrays = [(p, a) for p in self.rows if (a := self._open(p)) is not None]
        for p in set(self.rows) - {p for p, _ in row_arrays}:
            self._unknown_stats(_hook_of(p))  # an absent acts array has no rows to recompute statistics from
        total = sum(_count_chunks(pl) for pl in digests + others) + self.n_chunks * len(row_arrays)
        bar = progress_bar(total, "verify", "chunk", enabled=progress)
        try:
            # Digests first: the row chunks are compared with them as they are read.
            for pl in digests:
                self.checked_other += self._check_plain(pl, bar)
            for path, arr in row_arrays:
                self._check_rows(path, arr, bar)
            for pl in others:
                self.checked_other += self._check_plain(pl, bar)
        finally:
            bar.close()
        self._check_stats()
        return {
            "ok": not self.findings,
            "checked_chunks": self.checked_rows,
            "checked_other_chunks": self.checked_other,
            "checked_arrays": [p for p, _ in row_arrays],
            "checked_other_arrays": [pl.path for pl in digests + others],
            "bad_chunks": [asdict(f) for f in self.findings],
            "n_tokens": self.store.n_tokens,
            "complete": self.store.complete,
            "fingerprint": self._fingerprint(),
        }

    # -- planning ------------------------------------------------------------------------------
    def _open(self, path: str) -> zarr.Array | None:
        try:
            return self.store.group[path]
        except KeyError:
            self.bad(path, None, "missing", "missing array: the store format requires it")
        except Exception as exc:  # noqa: BLE001 - a damaged zarr.json surfaces as JSON, codec or zarr errors
            log.debug("opening %s failed: %r", path, exc)
            self.bad(path, None, "unreadable", f"unreadable array metadata (zarr.json: {type(exc).__name__})")
        return None

    def _digest_plans(self) -> list[_Plan]:
        """digests/<path> for every row array with full chunks; the partial last chunk's digest is in the commit."""
        plans = []
        n_full = self.store.n_tokens // self.store.chunk_rows
        tail = self.store.commit.get("tail_digests", {})
        for p in self.rows:
            if n_full < self.n_chunks:
                if p in tail:
                    self.recorded[p][n_full] = int(tail[p])
                else:
                    self.bad(p, n_full, "digest", "no digest recorded for the partial last chunk (commit.tail_digests)")
            if not n_full:
                continue
            path = f"{DIGESTS_GROUP}/{p}"
            arr = self._open(path)
            if arr is None:
                continue
            plans.append(_Plan(path, arr, self._valid_entries(path, arr, n_full), self._digests_handler(p)))
        return plans

    def _digests_handler(self, row_path: str):
        def keep(coords, sel, data) -> None:
            first = sel[0].start
            self.recorded[row_path][first : first + len(data)] = [int(d) for d in data]

        return keep

    def _other_plans(self) -> list[_Plan]:
        plans = []
        meta = self.store.meta
        if self.store.has_tokens:
            seq = ["row_start", "context"] if meta.get("context_size") else ["row_start"]
            for path in (f"{SEQUENCES_GROUP}/{name}" for name in seq):
                if (arr := self._open(path)) is not None:
                    plans.append(_Plan(path, arr, self._valid_entries(path, arr, self.store.n_sequences)))
        for name in (meta.get("ground_truth") or {}).get("arrays", []):
            path = f"{GROUND_TRUTH_GROUP}/{name}"
            if (arr := self._open(path)) is not None:
                plans.append(_Plan(path, arr, arr.shape[0] if arr.ndim else 1))
        return plans

    def _valid_entries(self, path: str, arr: zarr.Array, needed: int) -> int:
        if arr.shape[0] < needed:
            self.bad(path, None, "missing", f"holds {arr.shape[0]:,} entries; the commit record needs {needed:,}")
        return min(needed, arr.shape[0])

    # -- reading -------------------------------------------------------------------------------
    def _read(self, path: str, arr: zarr.Array, sel: tuple[slice, ...], chunk) -> np.ndarray | None:
        """The chunk's data, or None after recording why it cannot be read."""
        try:
            return np.asarray(arr[sel])
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - zarr, numcodecs and fsspec raise many types; all mean a bad chunk
            log.debug("reading chunk %s of %s failed: %r", chunk, path, exc)
            if isinstance(exc, ValueError) and CRC32C_MESSAGE in str(exc):
                where = "the chunk's stored bytes, or its shard's index," if arr.shards else "the chunk's stored bytes"
                self.bad(path, chunk, "checksum", f"checksum mismatch: {where} fail their crc32c check")
            else:
                self.bad(path, chunk, "unreadable", f"unreadable ({type(exc).__name__}; --log-level DEBUG shows why)")
            return None

    def _file_exists(self, arr: zarr.Array, coords: tuple[int, ...]) -> tuple[bool, str]:
        """Whether the file holding the chunk at `coords` (its shard's, in a sharded array) exists, and its key."""
        if arr.shards:
            coords = tuple(i * c // s for i, c, s in zip(coords, arr.chunks, arr.shards))
        key = arr.metadata.encode_chunk_key(coords)
        if self._fs is None:
            self._fs = filesystem(self.store.loc)
        return bool(self._fs.exists(join(self.store.loc, arr.path, key))), key

    def _check_plain(self, pl: _Plan, bar) -> int:
        """Read every chunk of an unsharded array; returns how many were read."""
        n = 0
        for coords, sel in _chunks(pl.array, pl.n_valid):
            chunk = _chunk_label(pl.array, coords)
            data = self._read(pl.path, pl.array, sel, chunk)
            n += 1
            bar.update(1)
            if data is None:
                continue
            if np.all(data == pl.array.fill_value):
                exists, key = self._file_exists(pl.array, coords)
                if not exists:
                    self.bad(pl.path, chunk, "missing", f"missing chunk: no file {key}, so it reads as fill values")
                    continue
            if pl.on_chunk is not None:
                pl.on_chunk(coords, sel, data)
        return n

    def _check_rows(self, path: str, arr: zarr.Array, bar) -> None:
        """Every committed chunk of a row array: crc32c, digest, and for acts/* NaN/Inf and statistics."""
        hook = _hook_of(path)
        n_rows = self._valid_entries(path, arr, self.store.n_tokens)
        tail = (0,) * (arr.ndim - 1)
        for c in range(self.n_chunks):
            lo, hi = self.store.chunk_bounds(c)
            bar.update(1)
            self.checked_rows += 1
            if lo >= n_rows:
                self._unknown_stats(hook)  # the missing rows were reported with the array
                continue
            rows = self._read(path, arr, (slice(lo, min(hi, n_rows)),), c)
            if rows is None:
                self._unknown_stats(hook)
                continue
            want = self.recorded[path][c]
            if want is not None and chunk_digest(rows) != want:
                self._unknown_stats(hook)
                exists, key = self._file_exists(arr, (c, *tail))
                if not exists:
                    self.bad(path, c, "missing", f"missing chunk: no shard file {key}, so rows {lo}:{hi} read as zeros")
                else:
                    self.bad(
                        path, c, "digest", f"digest mismatch: rows {lo}:{hi} differ from their recorded blake2b digest"
                    )
                continue
            if hook is not None:
                st = row_stats(rows, self.store.dtype(hook))
                merge_stats(self.recomputed[hook], st)
                if n_bad := st["nonfinite_rows"]:
                    self.bad(path, c, "nonfinite", f"non-finite rows: {n_bad} of rows {lo}:{hi} hold NaN or Inf")

    def _unknown_stats(self, hook: str | None) -> None:
        if hook is not None:
            self.stats_known[hook] = False

    # -- after reading -------------------------------------------------------------------------
    def _check_stats(self) -> None:
        """The commit record's statistics, where every chunk of the hook could be read and trusted."""
        recorded = self.store.commit.get("stats") or {}
        for hook, known in self.stats_known.items():
            if not known:
                continue
            problem = stats_difference(recorded.get(hook), self.recomputed[hook])
            if problem:
                self.bad(f"{ACTS_GROUP}/{hook}", None, "statistics", f"statistics in the commit record: {problem}")

    def _fingerprint(self) -> str | None:
        """The content fingerprint from the digests as read here; None when any of them is missing or bad."""
        if any(d is None for digests in self.recorded.values() for d in digests):
            return None
        manifest = {p: np.array(d, dtype=np.uint64) for p, d in self.recorded.items()}
        return fingerprint(self.store.meta, manifest)


def stats_difference(recorded, recomputed: dict) -> str | None:
    """What differs between a hook's statistics in the commit record and those recomputed from its rows, or None."""
    try:
        count, nonfinite = int(recorded["count"]), int(recorded["nonfinite_rows"])
        sums = {k: np.asarray(recorded[k], dtype=np.float64) for k in ("sum", "sum_sq")}
    except (TypeError, KeyError, ValueError):
        return "malformed (it needs count, nonfinite_rows, sum and sum_sq)"
    for key, have in (("count", count), ("nonfinite_rows", nonfinite)):
        if have != recomputed[key]:
            return f"{key} is {have:,}, the rows give {recomputed[key]:,}"
    d = len(recomputed["sum"])
    for key, have in sums.items():
        if have.shape != (d,):
            return f"{key} has shape {have.shape}; the hook has d_model {d}"
    # |sum_j| <= sqrt(count * sum_sq_j) bounds the scale of each column sum (Cauchy-Schwarz).
    scale = {"sum": np.sqrt(recomputed["count"] * recomputed["sum_sq"]), "sum_sq": recomputed["sum_sq"]}
    for key, have in sums.items():
        off = ~(np.abs(have - recomputed[key]) <= STATS_RTOL * scale[key] + 1e-12)
        if off.any():
            j = int(np.argmax(off))
            return (
                f"{key}[{j}] is {have[j]:.9g}, the rows give {recomputed[key][j]:.9g} "
                f"({int(off.sum())} of {d} dimensions differ)"
            )
    return None


def _hook_of(row_path: str) -> str | None:
    """The hook of an acts/<hook> row array; None for tokens, seq_id and position."""
    return row_path.split("/", 1)[1] if row_path.startswith(f"{ACTS_GROUP}/") else None


def _zero_stats(d: int) -> dict:
    return {"count": 0, "sum": np.zeros(d), "sum_sq": np.zeros(d), "nonfinite_rows": 0}


def _grid(arr: zarr.Array, n_valid: int) -> list[int]:
    """Chunks along each axis, counting only the first `n_valid` entries of the first axis."""
    if arr.ndim == 0:
        return []
    extent = (n_valid, *arr.shape[1:])
    return [-(-e // c) for e, c in zip(extent, arr.chunks)]


def _count_chunks(pl: _Plan) -> int:
    return int(np.prod(_grid(pl.array, pl.n_valid), dtype=np.int64))


def _chunks(arr: zarr.Array, n_valid: int) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """(grid coordinates, selection) of every chunk holding one of the first `n_valid` entries, in C order."""
    extent = (n_valid, *arr.shape[1:])
    for coords in itertools.product(*map(range, _grid(arr, n_valid))):
        yield coords, tuple(slice(i * c, min((i + 1) * c, e)) for i, c, e in zip(coords, arr.chunks, extent))


def _chunk_label(arr: zarr.Array, coords: tuple[int, ...]) -> int | list[int]:
    """The chunk's index along the first axis when the array is chunked along it only (every array osae writes)."""
    if not coords:
        return 0
    if all(c >= s for c, s in zip(arr.chunks[1:], arr.shape[1:])):
        return coords[0]
    return list(coords)
