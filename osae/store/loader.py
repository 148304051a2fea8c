"""Shuffled (B, d_model) batches of one hook, for training.

Design (docs/store-format.md#loader). Zarr is only fast when read chunk by chunk, and the rows of a chunk
come from few sequences, so mixing has to happen in memory. The loader streams the epoch's chunks (a
fresh random chunk order every epoch) into a *rolling buffer* of R slots: every batch takes B random
slots, and the next B rows of the stream take their places. A row therefore stays a geometric number of
batches, and the buffer holds the remains of many more sequences than R / context rows, which mixes about
twice as well per byte as keeping whole chunks. When the stream ends the buffer is drained in random order.

Every choice is a pure function of (seed, epoch, rank, batch), so the stream is reproducible. A resumed run
replays the slot bookkeeping (integers only) up to its batch, then reads just the chunks whose rows are
still in the buffer; nothing but (epoch, batch) is saved. Ranks stream disjoint chunks (every
world_size-th chunk of the epoch's order) and yield the same number of batches.
"""

from __future__ import annotations

import logging
import mmap
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from osae.constants import (
    ACTS_GROUP,
    DEFAULT_LOADER_BUFFER_BYTES,
    DEFAULT_LOADER_FIRST_FILL_BYTES,
    DEFAULT_READ_WORKERS,
)
from osae.errors import UsageError
from osae.store.core.direct import DirectChunkReader, direct_layout
from osae.store.core.format import storage_dtype
from osae.store.core.normalize import Normalizer
from osae.store.core.reader import ActivationStore, to_torch
from osae.store.core.split import SplitIntervals, split_intervals

log = logging.getLogger(__name__)


@dataclass
class LoaderConfig:
    batch_size: int = 4096
    """Rows (tokens) per batch."""
    buffer_bytes: int = DEFAULT_LOADER_BUFFER_BYTES
    """Shuffle buffer, in bytes of stored activations; a larger buffer mixes more sequences per batch."""
    first_fill_bytes: int = DEFAULT_LOADER_FIRST_FILL_BYTES
    """Bytes read before the first batch (at least one batch); the buffer then grows by one batch per batch
    up to buffer_bytes, so the first batch does not wait for a full buffer."""
    seed: int = 0
    """Drives the chunk order and the slot choices (with the epoch)."""
    split: str = "train"
    """Which split to stream: train, eval or all."""
    drop_last: bool = True
    """Drop the last partial batch of an epoch (always on when world_size > 1)."""
    prefetch_chunks: int = 2
    """Chunks read ahead of the buffer."""
    read_workers: int = 0
    """Chunks read at the same time; 0: 2 (measured best on a cold local disk and on loopback S3/HTTP);
    raise it for a remote store behind a link with real latency, where each read waits a round trip."""
    prefetch_batches: int = 2
    """Batches assembled ahead of the consumer."""
    dtype: str = "float32"
    """Dtype of the yielded batches (float32, or the stored dtype with 'store')."""
    direct_reads: bool = True
    """Read uncompressed chunks straight into the buffer (one range request per chunk on a remote store)
    instead of through zarr."""
    verify_checksums: bool = True
    """Check every chunk's crc32c on the direct path (zarr always checks)."""
    rank_mode: str = "chunks"
    """Several ranks: `chunks` (each reads disjoint chunks, its own stream) or `slice` (every rank builds the
    same global stream of batch_size * world_size rows and keeps its slice of each batch: the union of the
    ranks' batches is exactly the one-process batch, at world_size times the reading)."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise UsageError(f"batch_size must be positive; got {self.batch_size}")
        if self.buffer_bytes <= 0:
            raise UsageError(f"buffer_bytes must be positive; got {self.buffer_bytes}")
        if self.read_workers < 0:
            raise UsageError(f"read_workers must be 0 (automatic) or positive; got {self.read_workers}")
        if self.first_fill_bytes <= 0:
            raise UsageError(f"first_fill_bytes must be positive; got {self.first_fill_bytes}")
        if self.rank_mode not in ("chunks", "slice"):
            raise UsageError(f"rank_mode must be chunks or slice; got {self.rank_mode!r}")


def _populated_array(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An array whose pages the kernel maps up front (MAP_POPULATE): measured 0.36 s per GiB here, against
    2-2.7 s for faulting in a fresh np.empty or torch.empty page by page."""
    count = int(np.prod(shape, dtype=np.int64))
    populate = getattr(mmap, "MAP_POPULATE", None)
    if populate is None or count == 0:
        return np.zeros(shape, dtype=dtype)
    area = mmap.mmap(-1, count * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(area, dtype=dtype, count=count).reshape(shape)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key] + [0x05AE])


@dataclass
class EpochStream:
    """One rank's rows of one epoch, in stream order: chunk i contributes rows lo[i] .. lo[i] + sizes[i]."""

    chunks: np.ndarray
    lo: np.ndarray
    sizes: np.ndarray
    n_batches: int

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)])


def epoch_stream(
    intervals: SplitIntervals, *, seed: int, epoch: int, rank: int, world_size: int, batch_size: int, drop_last: bool
) -> EpochStream:
    order = _rng(seed, epoch).permutation(len(intervals.chunks))
    per_rank_rows = [int(intervals.sizes[order[r::world_size]].sum()) for r in range(world_size)]
    mine = order[rank::world_size]
    if world_size > 1 or drop_last:
        n_batches = min(per_rank_rows) // batch_size
    else:
        n_batches = -(-per_rank_rows[rank] // batch_size)
    return EpochStream(intervals.chunks[mine], intervals.lo[mine], intervals.sizes[mine], n_batches)


class SlotPlan:
    """The slot bookkeeping of the rolling buffer: which slots each batch takes and which stream rows refill
    them. Integers only, so it can be replayed cheaply to resume.

    The buffer starts with `first_rows` rows, not full, so the first batch comes after a few chunks of
    reading whatever the buffer size; each batch then brings in `B` rows for the slots it empties plus up to
    `B` more into fresh slots, until all R slots hold rows. Fresh slots are taken in order, so the buffer's
    pages are first touched sequentially (cheap), never at random."""

    def __init__(
        self, total_rows: int, n_slots: int, batch_size: int, seed: int, epoch: int, rank: int, first_rows: int
    ):
        self.total = total_rows
        self.R = min(n_slots, total_rows)
        self.B = batch_size
        self.rng = _rng(seed, epoch, rank, 3)
        self.filled = min(self.R, max(first_rows, batch_size))  # slots 0 .. filled-1 have been used
        self.slot_pos = np.full(self.R, -1, dtype=np.int64)  # stream position held by each slot (-1: empty)
        self.slot_pos[: self.filled] = np.arange(self.filled)
        self.stream_pos = self.filled  # next stream position to enter the buffer
        self.drain: np.ndarray | None = None  # slots left to emit once the stream is exhausted

    def next_batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slots to emit, the stream positions they held, refill slots): the next len(refill) stream rows
        go to the refill slots, in order."""
        if self.drain is None and self.stream_pos < self.total:
            n = self.filled
            slots = self.rng.choice(n, self.B, replace=False) if self.B < n else self.rng.permutation(n)
            emitted = self.slot_pos[slots]
            fresh = np.arange(self.filled, self.filled + min(self.B, self.R - self.filled))
            refill = np.concatenate([slots, fresh])[: self.total - self.stream_pos]
            self.slot_pos[slots] = -1
            self.slot_pos[refill] = np.arange(self.stream_pos, self.stream_pos + len(refill))
            self.stream_pos += len(refill)
            self.filled += max(0, len(refill) - len(slots))
            return slots, emitted, refill
        if self.drain is None:
            live = np.nonzero(self.slot_pos >= 0)[0]
            self.drain = live[self.rng.permutation(len(live))]
        slots, self.drain = self.drain[: self.B], self.drain[self.B :]
        emitted = self.slot_pos[slots]
        self.slot_pos[slots] = -1
        return slots, emitted, slots[:0]


class ShuffledLoader:
    """Iterate shuffled batches: `for x in loader` (epochs follow each other), `state()` to save a position.

    The yielded tensors come from a small rotating pool: a batch stays valid until `prefetch_batches + 1`
    further batches have been drawn; clone it to keep it longer.
    """

    def __init__(
        self,
        store: ActivationStore,
        hook: str | None = None,
        config: LoaderConfig | None = None,
        *,
        normalizer: Normalizer | None = None,
        rank: int = 0,
        world_size: int = 1,
        with_rows: bool = False,
    ):
        self.store = store
        self.hook = store.resolve_hook(hook)
        self.cfg = config or LoaderConfig()
        self.normalizer = normalizer or Normalizer("none")
        if not 0 <= rank < world_size:
            raise UsageError(f"rank must be in [0, {world_size}); got {rank}")
        self.rank, self.world_size = rank, world_size
        # The stream this rank follows: its own (chunks), or the global one of which it keeps a slice.
        slicing = self.cfg.rank_mode == "slice" and world_size > 1
        self.stream_rank, self.stream_world = (0, 1) if slicing else (rank, world_size)
        self.stream_batch = self.cfg.batch_size * (world_size if slicing else 1)
        self.slice_start = rank * self.cfg.batch_size if slicing else 0
        self.with_rows = with_rows
        self.intervals = split_intervals(store, self.cfg.split)
        if self.intervals.n_rows == 0:
            raise UsageError(f"{store.loc.display} has no rows in the '{self.cfg.split}' split")
        self.d = store.d_model(self.hook)
        self.store_dtype = store.dtype(self.hook)
        row_bytes = self.d * storage_dtype(self.store_dtype).itemsize
        self.n_slots = max(self.stream_batch, self.cfg.buffer_bytes // row_bytes)
        self.first_rows = max(1, self.cfg.first_fill_bytes // row_bytes)
        self.max_slots = min(self.n_slots, self.intervals.n_rows)
        self.epoch, self.batch = 0, 0
        self._buffers: dict[str, np.ndarray] = {}
        self._active: _EpochRun | None = None

    def _arena(self, name: str, shape: tuple, dtype, populate: bool = True) -> np.ndarray:
        """Buffers live as long as the loader: first-touch page faults of a fresh GiB buffer cost more than
        a whole epoch of small stores on this machine, and must not be paid every epoch. `populate=False`
        leaves the pages to be touched on first write (the shuffle buffer, filled in slot order, so that
        its size does not delay the first batch)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != np.dtype(dtype):
            buf = _populated_array(shape, np.dtype(dtype)) if populate else np.empty(shape, np.dtype(dtype))
            self._buffers[name] = buf
        return buf

    def _direct_reader(self):
        """A zarr-bypassing chunk reader for uncompressed stores, local or remote (osae.store.core.direct), or None."""
        path = f"{ACTS_GROUP}/{self.hook}"
        layout = direct_layout(self.store, path) if self.cfg.direct_reads else None
        return DirectChunkReader(self.store, path, layout, verify=self.cfg.verify_checksums) if layout else None

    def _start(self, stream: EpochStream) -> _EpochRun:
        """A run over the rest of the current epoch; a run left unfinished by the caller is stopped first,
        since runs share the loader's buffers."""
        if self._active is not None:
            self._active.close()
        self._active = _EpochRun(self, stream, self.epoch, self.batch)
        return self._active

    # -- position -----------------------------------------------------------------------------
    def state(self) -> dict:
        """The position of the next batch; `load_state` of it reproduces the same following batches."""
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": self.cfg.seed,
            "batch_size": self.cfg.batch_size,
            "buffer_bytes": self.cfg.buffer_bytes,
            "first_fill_bytes": self.cfg.first_fill_bytes,
            "rank": self.rank,
            "world_size": self.world_size,
            "split": self.cfg.split,
            "n_tokens": self.store.n_tokens,
        }

    def load_state(self, state: dict) -> None:
        defaults = {"first_fill_bytes": DEFAULT_LOADER_FIRST_FILL_BYTES}  # states saved before it existed
        for key in ("seed", "batch_size", "buffer_bytes", "first_fill_bytes", "world_size", "split", "n_tokens"):
            mine = self.state()[key]
            if state.get(key, defaults.get(key)) != mine:
                raise UsageError(f"loader state was saved with {key}={state.get(key)}, this loader has {mine}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def stream(self, epoch: int) -> EpochStream:
        return epoch_stream(
            self.intervals,
            seed=self.cfg.seed,
            epoch=epoch,
            rank=self.stream_rank,
            world_size=self.stream_world,
            batch_size=self.stream_batch,
            drop_last=self.cfg.drop_last or self.world_size > 1,
        )

    def batches_per_epoch(self) -> int:
        return self.stream(self.epoch).n_batches

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self):
        while True:
            stream = self.stream(self.epoch)
            if stream.n_batches == 0:
                raise UsageError(
                    f"the '{self.cfg.split}' split has fewer rows than one batch of {self.cfg.batch_size} per rank"
                )
            if self.batch < stream.n_batches:
                for item in self._start(stream):
                    self.batch += 1
                    yield item
            self.epoch, self.batch = self.epoch + 1, 0

    def epoch_batches(self):
        """Only the rest of the current epoch."""
        stream = self.stream(self.epoch)
        for item in self._start(stream):
            self.batch += 1
            yield item
        self.epoch, self.batch = self.epoch + 1, 0


class _ChunkReader(threading.Thread):
    """Reads the stream's chunks into a ring of staging bins (decoded in place, no extra copy) and hands
    them over in stream order, with `workers` chunk reads in flight."""

    def __init__(self, run: _EpochRun, first_chunk: int):
        super().__init__(daemon=True, name="osae-reader")
        self.run_ = run
        self.first_chunk = first_chunk
        ld = run.ld
        self.workers = ld.cfg.read_workers or DEFAULT_READ_WORKERS
        n_bins = ld.cfg.prefetch_chunks + self.workers  # bins in flight never starve the consumer's
        self.bins = ld._arena("bins", (n_bins, ld.store.chunk_rows, ld.d), storage_dtype(ld.store_dtype))
        self.free: queue.Queue = queue.Queue()
        for b in range(n_bins):
            self.free.put(b)
        self.ready: queue.Queue = queue.Queue()

    def _free_bin(self) -> int | None:
        while not self.run_.stop.is_set():
            try:
                return self.free.get(timeout=0.5)
            except queue.Empty:
                pass
        return None

    def run(self) -> None:
        run, st = self.run_, self.run_.stream
        store = run.ld.store
        path = f"{ACTS_GROUP}/{run.ld.hook}"
        direct = run.ld._direct_reader()

        def read(i: int, b: int) -> tuple[int, int, int]:
            c = int(st.chunks[i])
            c_lo, c_hi = store.chunk_bounds(c)
            if direct is not None:
                direct.read_chunk_into(c, self.bins[b])
            else:
                store.read_rows(path, c_lo, c_hi, out=self.bins[b, : c_hi - c_lo])
            skip = int(st.lo[i]) - c_lo
            return b, skip, skip + int(st.sizes[i])

        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="osae-read") if self.workers > 1 else None
        in_flight: deque = deque()
        try:
            for i in range(self.first_chunk, len(st.chunks)):
                b = self._free_bin()
                if b is None:
                    return
                if pool is None:
                    self.ready.put(read(i, b))
                    continue
                in_flight.append(pool.submit(read, i, b))
                while in_flight and (len(in_flight) >= self.workers or in_flight[0].done()):
                    self.ready.put(in_flight.popleft().result())
            while in_flight:
                self.ready.put(in_flight.popleft().result())
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self.ready.put(exc)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def take(self):
        while True:
            try:
                item = self.ready.get(timeout=0.5)
            except queue.Empty:
                if self.run_.stop.is_set():
                    raise _Stopped() from None
                continue
            if isinstance(item, BaseException):
                raise item
            return item


class _Stopped(Exception):
    pass


class _EpochRun:
    """The threads and buffers that produce one epoch's batches from `first_batch` on."""

    def __init__(self, loader: ShuffledLoader, stream: EpochStream, epoch: int, first_batch: int):
        self.ld, self.stream, self.epoch, self.first_batch = loader, stream, epoch, first_batch
        cfg = loader.cfg
        self.B = loader.stream_batch
        self.total = int(stream.sizes.sum())
        self.plan = SlotPlan(self.total, loader.n_slots, self.B, cfg.seed, epoch, loader.stream_rank, loader.first_rows)
        self.stop = threading.Event()
        self.out_q: queue.Queue = queue.Queue(maxsize=cfg.prefetch_batches)
        dt = storage_dtype(loader.store_dtype)
        self.buffer = loader._arena("buffer", (loader.max_slots, loader.d), dt, populate=False)[: self.plan.R]
        self.buffer_t = to_torch(self.buffer, loader.store_dtype)
        out_dtype = getattr(torch, cfg.dtype) if cfg.dtype != "store" else self.buffer_t.dtype
        n_out = cfg.prefetch_batches + 2
        pool = loader._arena(
            f"pool-{cfg.dtype}",
            (n_out, cfg.batch_size, loader.d),
            np.dtype("float32") if out_dtype == torch.float32 else dt,
        )
        pool_t = torch.from_numpy(pool) if out_dtype == torch.float32 else to_torch(pool, loader.store_dtype)
        self.pool = list(pool_t.to(out_dtype) if pool_t.dtype != out_dtype else pool_t)  # rows: this rank's batch
        self.staging = to_torch(loader._arena("staging", (cfg.batch_size, loader.d), dt), loader.store_dtype)
        self.offsets = stream.offsets

    # -- the stream of rows coming out of the chunk reader --------------------------------------
    def _open_stream(self, position: int) -> None:
        """Position the chunk cursor at stream row `position` and start reading from its chunk."""
        i = int(np.searchsorted(self.offsets, position, side="right")) - 1
        i = min(i, len(self.stream.chunks))
        self.cursor = (None, 0, 0)  # (bin, next row in bin, end row in bin)
        self.reader = _ChunkReader(self, i)
        self.reader.start()
        skip = position - int(self.offsets[i]) if i < len(self.stream.chunks) else 0
        if skip:
            self._take_rows(skip, None, None)

    def _take_rows(self, count: int, dest_slots: torch.Tensor | None, dest_start: int | None) -> None:
        """Move the next `count` stream rows into buffer slots (`dest_slots`, or a contiguous range from
        `dest_start`), or drop them when both are None."""
        done = 0
        while done < count:
            b, k, n = self.cursor
            if b is None or k == n:
                if b is not None:
                    self.reader.free.put(b)
                b, k, n = self.reader.take()
            take = min(count - done, n - k)
            src = to_torch(self.reader.bins[b, k : k + take], self.ld.store_dtype)
            if dest_slots is not None:
                self.buffer_t.index_copy_(0, dest_slots[done : done + take], src)
            elif dest_start is not None:
                self.buffer_t[dest_start + done : dest_start + done + take].copy_(src)
            self.cursor = (b, k + take, n)
            done += take

    # -- restoring the buffer at a batch boundary ----------------------------------------------
    def _fill(self) -> None:
        """Bring the buffer to its state before `first_batch`: replay the plan, then load its rows."""
        plan = self.plan
        for _ in range(self.first_batch):
            plan.next_batch()
        if self.first_batch == 0:
            self._open_stream(0)
            self._take_rows(plan.filled, None, 0)
            return
        # Resume: read each chunk that still has rows in the buffer, once, and place them.
        live = np.nonzero(plan.slot_pos >= 0)[0]
        pos = plan.slot_pos[live]
        chunk_of = np.searchsorted(self.offsets, pos, side="right") - 1
        path = f"{ACTS_GROUP}/{self.ld.hook}"
        for i in np.unique(chunk_of):
            sel = chunk_of == i
            lo = int(self.stream.lo[i])
            rows = self.ld.store.read_rows(path, lo, lo + int(self.stream.sizes[i]))
            within = pos[sel] - int(self.offsets[i])
            self.buffer[live[sel]] = rows[within]
        self._open_stream(min(plan.stream_pos, self.total))

    def _assemble(self) -> None:
        try:
            self._fill()
            for bi in range(self.first_batch, self.stream.n_batches):
                if self.stop.is_set():
                    return
                slots, emitted, refill = self.plan.next_batch()
                slots_t = torch.from_numpy(slots)
                lo = self.ld.slice_start
                mine = slots_t[lo : lo + self.ld.cfg.batch_size]  # the whole batch unless ranks slice it
                out = self.pool[bi % len(self.pool)][: len(mine)]
                staging = self.staging[: len(mine)]
                torch.index_select(self.buffer_t, 0, mine, out=staging)
                self.ld.normalizer.into(staging, out)
                if len(refill):
                    self._take_rows(len(refill), torch.from_numpy(refill), None)
                item = (
                    (out, _rows_at(self.stream, self.offsets, emitted[lo : lo + len(mine)]))
                    if self.ld.with_rows
                    else out
                )
                while not self.stop.is_set():
                    try:
                        self.out_q.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
            self.out_q.put(None)
        except _Stopped:
            return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self.stop.set()
            self.out_q.put(exc)

    def __iter__(self):
        if self.first_batch >= self.stream.n_batches:
            return
        self.assembler = threading.Thread(target=self._assemble, daemon=True, name="osae-assembler")
        self.assembler.start()
        try:
            while True:
                item = self.out_q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop both threads and wait for them, so the shared buffers are free."""
        self.stop.set()
        for thread in (getattr(self, "assembler", None), getattr(self, "reader", None)):
            while thread is not None and thread.is_alive():
                try:  # unblock the assembler if it waits on a full queue
                    self.out_q.get_nowait()
                except queue.Empty:
                    pass
                thread.join(timeout=0.1)


def _rows_at(stream: EpochStream, offsets: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Store row numbers of stream positions."""
    i = np.searchsorted(offsets, pos, side="right") - 1
    return stream.lo[i] + (pos - offsets[i])


def iter_split_rows(store: ActivationStore, hook: str, split: str = "eval", max_rows: int | None = None):
    """Yield (start_row, rows) blocks of a split in store order, one chunk interval at a time (no shuffle)."""
    iv = split_intervals(store, split)
    seen = 0
    path = f"{ACTS_GROUP}/{hook}"
    for lo, hi in zip(iv.lo.tolist(), iv.hi.tolist()):
        if max_rows is not None:
            hi = min(hi, lo + max_rows - seen)
        if hi <= lo:
            break
        yield lo, store.read_rows(path, lo, hi)
        seen += hi - lo
        if max_rows is not None and seen >= max_rows:
            break
