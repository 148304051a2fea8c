"""Whole-shard writes by several processes, committed by one: `ShardWriter` (rank 0) and `ShardSink` (any rank).

Rank 0 opens the store with `ShardWriter` (it holds the writer lock) and `reserve`s its rows. Every rank
(rank 0 included) writes whole, disjoint shards through a `ShardSink` and gets back a `ShardPayload`
(chunk digests, statistics, sequences); rank 0 gathers the payloads of a round and `commit_shards` them
through `commit.CommitLog`. Each shard file is written in one assignment by one process (measured safe;
concurrent partial-shard writes were not). Rows of shards written but not yet committed stay invisible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr

from osae.constants import ACTS_GROUP
from osae.errors import StoreError, UsageError
from osae.store.core.commit import LockedWriter
from osae.store.core.digest import chunk_digests
from osae.store.core.layout import (
    disk_full,
    reopen_for_resume,
)
from osae.store.core.location import Location, parse_location
from osae.store.core.reader import open_group, read_metadata
from osae.store.core.stats import row_stats


@dataclass
class ShardPayload:
    """What a rank hands rank 0 after writing one shard: all that its commit needs, without re-reading it."""

    shard: int
    digests: dict[str, np.ndarray]
    """Array path -> digests of the shard's chunks, in order."""
    stats: dict[str, dict]
    """Hook -> statistics of the shard's rows (`stats.row_stats`)."""
    seq_starts: np.ndarray | None = None
    """First rows of the sequences that begin in this shard."""
    seq_context: np.ndarray | None = None
    """Their token windows, (n, context_size)."""


class ShardSink:
    """Writes whole shards into a store that a `ShardWriter` holds open. Use `ShardSink.open` on other ranks."""

    def __init__(self, loc: Location, group: zarr.Group, meta: dict):
        self.loc, self.group, self.meta = loc, group, meta
        self.shard_rows = int(meta["shard_rows"])
        self.chunk_rows = int(meta["chunk_rows"])

    @classmethod
    def open(cls, url) -> ShardSink:
        """A sink on the store at `url`, which rank 0's `ShardWriter` has created (or resumed) and reserved."""
        loc = parse_location(url)
        group = open_group(loc, read_only=False)
        return cls(loc, group, read_metadata(group, loc))

    def write_shard(
        self,
        shard: int,
        rows: dict[str, np.ndarray],
        *,
        seq_starts: np.ndarray | None = None,
        seq_context: np.ndarray | None = None,
    ) -> ShardPayload:
        """Write shard `shard` of every row array (`rows` maps array paths such as `acts/<hook>` and `tokens`
        to at most one shard of rows) and return its payload. The last shard of a store may be short."""
        start = shard * self.shard_rows
        payload = ShardPayload(shard, {}, {}, seq_starts, seq_context)
        try:
            for p, data in rows.items():
                if len(data) > self.shard_rows:
                    raise UsageError(f"{p}: {len(data)} rows do not fit in one shard of {self.shard_rows} rows")
                self.group[p][start : start + len(data)] = data
                payload.digests[p] = chunk_digests(data, self.chunk_rows)
                if p.startswith(f"{ACTS_GROUP}/"):
                    hook = p.split("/", 1)[1]
                    payload.stats[hook] = row_stats(data, self.meta["hooks"][hook]["dtype"], self.chunk_rows)
        except OSError as exc:
            if disk_full(exc):
                raise StoreError(
                    f"disk full while writing shard {shard} of {self.loc.display}; committed rows are "
                    f"intact: free space and re-run to resume"
                ) from None
            raise
        return payload


class ShardWriter(LockedWriter):
    """Rank 0's side: holds the writer lock, sizes the store, and commits rounds of shards in order."""

    @classmethod
    def create(cls, url, *, has_tokens: bool = True, **layout) -> ShardWriter:
        """A new, empty store (see `LockedWriter.create`); harvested stores hold token ids by default."""
        return super().create(url, has_tokens=has_tokens, **layout)

    @classmethod
    def resume(cls, url) -> ShardWriter:
        """Reopen an interrupted store; shards are rewritten from the one holding row `committed` on."""
        return cls(reopen_for_resume(url))

    @property
    def committed(self) -> int:
        """Rows committed (visible to readers)."""
        return self.log.committed

    def reserve(self, n_rows: int) -> None:
        """Size every row array for `n_rows` rows, so that other processes can write whole shards."""
        try:
            self.log.grow(n_rows)
        except OSError as exc:
            raise self.log.os_error(exc) from None

    def sink(self) -> ShardSink:
        """A sink for this process's own shards (sharing this writer's open group)."""
        return ShardSink(self.loc, self.group, self.meta)

    def commit_shards(self, n_tokens: int, payloads: list[ShardPayload]) -> None:
        """Commit rows [0, n_tokens): every shard below it is written, and `payloads` are those written since
        the last commit (in any order)."""
        ordered = sorted(payloads, key=lambda p: p.shard)
        for pay in ordered:
            if pay.seq_starts is not None and len(pay.seq_starts):
                self.log.add_sequences(pay.seq_starts, pay.seq_context)
        chunks_per_shard = self.shard_rows // self.chunk_rows
        try:
            self.log.commit_rows(
                n_tokens, [(p.shard * chunks_per_shard, p.digests) for p in ordered], [p.stats for p in ordered]
            )
        except OSError as exc:
            raise self.log.os_error(exc) from None
