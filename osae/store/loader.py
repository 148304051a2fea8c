"""Shuffled (B, d_model) batches of one hook, for training.

Design (docs/store-format.md#loader). Reading whole chunks is the only fast way into Zarr, and rows of a
chunk come from few sequences, so mixing needs many chunks in memory at once. The loader keeps M chunks
*live* in a fixed set of bins; each chunk is decoded straight into its bin (no staging copy) and lives for
L steps, giving one random piece of its rows to every step, so each step mixes rows of M chunks.
Arrivals are staggered (one chunk ends, the next begins), which keeps M chunks live from the first step
to the last. Consecutive rows of the step stream are cut into batches of B and permuted inside the batch.

Every choice is a pure function of (seed, epoch, rank, chunk id, batch index), so the stream is
reproducible and a resumed run recomputes where it was from two integers (epoch, batch) without having
saved any buffer. Ranks take disjoint chunks (every world_size-th chunk of the epoch's permutation) and
yield the same number of batches.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from osae.constants import ACTS_GROUP, DEFAULT_LOADER_BUFFER_BYTES
from osae.store.format import storage_dtype
from osae.store.normalize import Normalizer
from osae.store.reader import ActivationStore, to_torch
from osae.store.split import SplitIntervals, split_intervals

log = logging.getLogger(__name__)


@dataclass
class LoaderConfig:
    batch_size: int = 4096
    """Rows (tokens) per batch."""
    buffer_bytes: int = DEFAULT_LOADER_BUFFER_BYTES
    """Memory for live chunks, in bytes of stored activations; more chunks in memory mix batches better."""
    seed: int = 0
    """Drives the chunk order and the row permutations (with the epoch)."""
    split: str = "train"
    """Which split to stream: train, eval or all."""
    drop_last: bool = True
    """Drop the last partial batch of an epoch (always on when world_size > 1)."""
    prefetch_chunks: int = 2
    """Chunks read ahead of the live set."""
    prefetch_batches: int = 2
    """Batches assembled ahead of the consumer."""
    dtype: str = "float32"
    """Dtype of the yielded batches (float32, or the stored dtype with 'store')."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive; got {self.batch_size}")
        if self.buffer_bytes <= 0:
            raise ValueError(f"buffer_bytes must be positive; got {self.buffer_bytes}")


@dataclass
class EpochPlan:
    """Which rows every step of one epoch takes, for one rank. All arrays are indexed by live-chunk order i."""

    chunks: np.ndarray  # store chunk id of the i-th chunk of this rank's epoch
    lo: np.ndarray  # first kept row of that chunk (absolute)
    sizes: np.ndarray  # kept rows
    start: np.ndarray  # first step the chunk is live
    end: np.ndarray  # one past its last live step
    step_rows: np.ndarray  # rows emitted by every step
    n_live: int  # M: chunks live at once
    n_batches: int

    @property
    def step_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.step_rows)])


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key] + [0x05AE])


def plan_epoch(
    intervals: SplitIntervals, *, seed: int, epoch: int, rank: int, world_size: int,
    batch_size: int, live_chunks: int, drop_last: bool,
) -> EpochPlan:
    order = _rng(seed, epoch).permutation(len(intervals.chunks))
    per_rank_rows = [int(intervals.sizes[order[r::world_size]].sum()) for r in range(world_size)]
    mine = order[rank::world_size]
    chunks, lo, sizes = intervals.chunks[mine], intervals.lo[mine], intervals.sizes[mine]
    n = len(chunks)
    if world_size > 1 or drop_last:
        n_batches = min(per_rank_rows) // batch_size
    else:
        n_batches = -(-per_rank_rows[rank] // batch_size)
    m = max(1, min(live_chunks, n))
    mean_rows = float(sizes.mean()) if n else 1.0
    lifetime = max(m, int(round(m * mean_rows / batch_size)))
    i = np.arange(n)
    end = ((i + 1) * lifetime) // m
    if n:
        end[max(0, n - m) :] = max(1, (n * lifetime) // m)  # the last M chunks end together: no thin tail
    start = np.zeros(n, dtype=np.int64)
    start[m:] = end[: n - m]
    n_steps = int(end[-1]) if n else 0
    # Rows per step: chunk i gives sizes//K rows to each of its K steps, plus one to its first sizes%K.
    k = end - start
    base, extra = sizes // np.maximum(k, 1), sizes % np.maximum(k, 1)
    diff = np.zeros(n_steps + 1, dtype=np.int64)
    np.add.at(diff, start, base)
    np.add.at(diff, end, -base)
    np.add.at(diff, start, 1 * (extra > 0))
    np.add.at(diff, start + extra, -1 * (extra > 0))
    step_rows = np.cumsum(diff)[:n_steps]
    return EpochPlan(chunks, lo, sizes, start, end, step_rows, m, n_batches)


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
            raise ValueError(f"rank must be in [0, {world_size}); got {rank}")
        self.rank, self.world_size = rank, world_size
        self.with_rows = with_rows
        self.intervals = split_intervals(store, self.cfg.split)
        if self.intervals.n_rows == 0:
            raise ValueError(f"{store.loc.display} has no rows in the '{self.cfg.split}' split")
        self.d = store.d_model(self.hook)
        self.store_dtype = store.dtype(self.hook)
        row_bytes = self.d * storage_dtype(self.store_dtype).itemsize
        self.live_chunks = max(1, self.cfg.buffer_bytes // (row_bytes * store.chunk_rows))
        self.epoch, self.batch = 0, 0
        self._thread_error: BaseException | None = None

    # -- position -----------------------------------------------------------------------------
    def state(self) -> dict:
        """The position of the next batch; `load_state` of it reproduces the same following batches."""
        return {
            "epoch": self.epoch, "batch": self.batch, "seed": self.cfg.seed, "batch_size": self.cfg.batch_size,
            "buffer_bytes": self.cfg.buffer_bytes, "rank": self.rank, "world_size": self.world_size,
            "split": self.cfg.split, "n_tokens": self.store.n_tokens,
        }

    def load_state(self, state: dict) -> None:
        for key in ("seed", "batch_size", "buffer_bytes", "world_size", "split", "n_tokens"):
            mine = self.state()[key]
            if state.get(key) != mine:
                raise ValueError(f"loader state was saved with {key}={state.get(key)}, this loader has {mine}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(
            self.intervals, seed=self.cfg.seed, epoch=epoch, rank=self.rank, world_size=self.world_size,
            batch_size=self.cfg.batch_size, live_chunks=self.live_chunks, drop_last=self.cfg.drop_last,
        )

    def batches_per_epoch(self) -> int:
        return self.plan(self.epoch).n_batches

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self):
        while True:
            plan = self.plan(self.epoch)
            if plan.n_batches == 0:
                raise ValueError(
                    f"the '{self.cfg.split}' split has fewer rows than one batch of {self.cfg.batch_size} per rank"
                )
            if self.batch < plan.n_batches:
                for item in _EpochRun(self, plan, self.epoch, self.batch):
                    self.batch += 1
                    yield item
            self.epoch, self.batch = self.epoch + 1, 0

    def epoch_batches(self):
        """Only the rest of the current epoch."""
        plan = self.plan(self.epoch)
        for item in _EpochRun(self, plan, self.epoch, self.batch):
            self.batch += 1
            yield item
        self.epoch, self.batch = self.epoch + 1, 0


class _EpochRun:
    """The threads and buffers that produce one epoch's batches from `first_batch` on."""

    def __init__(self, loader: ShuffledLoader, plan: EpochPlan, epoch: int, first_batch: int):
        self.ld, self.plan, self.epoch, self.first_batch = loader, plan, epoch, first_batch
        cfg = loader.cfg
        self.B = cfg.batch_size
        self.cr = loader.store.chunk_rows
        # A batch can need the chunks that start while its rows are drawn: about B / (rows per chunk).
        mean_rows = max(1.0, float(plan.sizes.mean())) if len(plan.sizes) else 1.0
        spill = int(np.ceil(2 * self.B / mean_rows)) + 1
        self.n_bins = min(len(plan.chunks), plan.n_live + cfg.prefetch_chunks + spill) or 1
        dt = storage_dtype(loader.store_dtype)
        self.bins = np.empty((self.n_bins * self.cr, loader.d), dtype=dt)
        self.bins_t = to_torch(self.bins, loader.store_dtype)
        self.offsets = plan.step_offsets
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.loaded = -1  # chunks 0..loaded are in their bins
        self.released = -1  # chunks 0..released may be overwritten
        self.out_q: queue.Queue = queue.Queue(maxsize=cfg.prefetch_batches)
        out_dtype = getattr(torch, cfg.dtype) if cfg.dtype != "store" else self.bins_t.dtype
        self.pool = [torch.empty((self.B, loader.d), dtype=out_dtype) for _ in range(cfg.prefetch_batches + 2)]
        self.staging = torch.empty((self.B, loader.d), dtype=self.bins_t.dtype)
        self.perms: dict[int, np.ndarray] = {}

    # The rows of step t: for each live chunk, its piece (t - start) of a fixed permutation of its rows.
    def _step_rows(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.plan
        first = int(np.searchsorted(p.end, t, side="right"))
        last = int(np.searchsorted(p.start, t, side="right"))
        idx, rows = [], []
        for i in range(first, last):
            k = int(p.end[i] - p.start[i])
            j = t - int(p.start[i])
            n = int(p.sizes[i])
            base, extra = divmod(n, k)
            a = j * base + min(j, extra)
            b = a + base + (1 if j < extra else 0)
            perm = self._perm(i)
            piece = perm[a:b]
            idx.append((i % self.n_bins) * self.cr + piece)
            rows.append(p.lo[i] + piece)
        if not idx:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(idx), np.concatenate(rows)

    def _perm(self, i: int) -> np.ndarray:
        if i not in self.perms:
            chunk = int(self.plan.chunks[i])
            self.perms[i] = _rng(self.ld.cfg.seed, self.epoch, chunk, 1).permutation(int(self.plan.sizes[i]))
            for old in [k for k in self.perms if int(self.plan.end[k]) < int(self.plan.start[i]) - 1]:
                del self.perms[old]
        return self.perms[i]

    def _reader(self, first_chunk: int, last_chunk: int) -> None:
        try:
            store, hook = self.ld.store, self.ld.hook
            for i in range(first_chunk, last_chunk):
                with self.cond:
                    while i - self.n_bins > self.released and not self.stop.is_set():
                        self.cond.wait(0.5)
                if self.stop.is_set():
                    return
                b = i % self.n_bins
                lo, n = int(self.plan.lo[i]), int(self.plan.sizes[i])
                store.read_rows(f"{ACTS_GROUP}/{hook}", lo, lo + n, out=self.bins[b * self.cr : b * self.cr + n])
                with self.cond:
                    self.loaded = i
                    self.cond.notify_all()
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.ld._thread_error = exc
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        try:
            self.out_q.put_nowait(exc)
        except queue.Full:
            pass

    def _assembler(self) -> None:
        try:
            p, B = self.plan, self.B
            total = int(self.offsets[-1])
            pos = self.first_batch * B
            t = int(np.searchsorted(self.offsets, pos, side="right")) - 1
            pend_idx, pend_rows, pend_start = np.empty(0, np.int64), np.empty(0, np.int64), int(self.offsets[t]) if len(self.offsets) > 1 else 0
            for bi in range(self.first_batch, p.n_batches):
                want_end = min((bi + 1) * B, total)
                while pend_start + len(pend_idx) < want_end:
                    idx, rows = self._step_rows(t)
                    pend_idx = np.concatenate([pend_idx, idx])
                    pend_rows = np.concatenate([pend_rows, rows])
                    t += 1
                a = bi * B - pend_start
                b = want_end - pend_start
                idx, rows = pend_idx[a:b], pend_rows[a:b]
                pend_idx, pend_rows, pend_start = pend_idx[b:], pend_rows[b:], want_end
                # Chunks that ended before this batch's first step are no longer needed; every chunk
                # whose rows this batch takes must be in its bin.
                first_step = int(np.searchsorted(self.offsets, bi * B, side="right")) - 1
                need = int(np.searchsorted(p.start, t - 1, side="right")) - 1
                with self.cond:
                    self.released = max(self.released, int(np.searchsorted(p.end, first_step, side="right")) - 1)
                    self.cond.notify_all()
                    while self.loaded < need and not self.stop.is_set():
                        self.cond.wait(0.5)
                if self.stop.is_set():
                    return
                order = _rng(self.ld.cfg.seed, self.epoch, self.ld.rank, bi, 2).permutation(len(idx))
                idx, rows = idx[order], rows[order]
                out = self.pool[bi % len(self.pool)][: len(idx)]
                staging = self.staging[: len(idx)]
                torch.index_select(self.bins_t, 0, torch.from_numpy(idx), out=staging)
                self.ld.normalizer.into(staging, out)
                done_step = int(np.searchsorted(self.offsets, want_end, side="right")) - 1
                with self.cond:
                    self.released = max(self.released, int(np.searchsorted(p.end, done_step, side="right")) - 1)
                    self.cond.notify_all()
                item = (out, rows) if self.ld.with_rows else out
                while not self.stop.is_set():
                    try:
                        self.out_q.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
            self.out_q.put(None)
        except BaseException as exc:
            self._fail(exc)

    def __iter__(self):
        p = self.plan
        if self.first_batch >= p.n_batches:
            return
        pos = self.first_batch * self.B
        t0 = int(np.searchsorted(self.offsets, pos, side="right")) - 1
        first_chunk = int(np.searchsorted(p.end, t0, side="right"))  # first chunk still live at t0
        self.released = first_chunk - 1
        final_row = min(p.n_batches * self.B, int(self.offsets[-1])) - 1
        last_step = int(np.searchsorted(self.offsets, final_row, side="right")) - 1
        last_chunk = int(np.searchsorted(p.start, last_step, side="right"))
        self.loaded = first_chunk - 1
        reader = threading.Thread(target=self._reader, args=(first_chunk, last_chunk), daemon=True, name="osae-reader")
        assembler = threading.Thread(target=self._assembler, daemon=True, name="osae-assembler")
        reader.start()
        assembler.start()
        try:
            while True:
                item = self.out_q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop.set()
            with self.cond:
                self.cond.notify_all()
            while True:  # unblock the assembler if it waits on a full queue
                try:
                    self.out_q.get_nowait()
                except queue.Empty:
                    break
            assembler.join(timeout=10)
            reader.join(timeout=10)


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
