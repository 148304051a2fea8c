"""The Zarr v3 activation store: its public API. Code outside `osae.store` imports from here only.

Reading: `ActivationStore` (open any URL; committed rows only), `store_exists`, `iter_split_rows` (committed
rows of a split, in order, as stored), `iter_rows` / `load_rows` (the same as float32 torch batches),
`to_float32` / `to_torch` (stored dtype -> compute dtype), `Normalizer`
(training units <-> store units), `ShuffledLoader` + `LoaderConfig` (the resumable shuffled stream),
`split_intervals`, `store_fingerprint` (content hash of the committed rows).
Writing: `hook_spec` describes a hook; `StoreWriter` appends rows in any sizes from one process;
`ShardWriter` (rank 0) + `ShardSink` (every rank) write whole shards from several processes, committed by
rank 0 from each shard's `ShardPayload`. Both writers resume after a crash at their committed rows.
Tools: `store_info`, `verify_store`, `copy_store` (`osae store info | verify | copy`), `import_activations`
and `export_rows` (`osae store import | export`), `file_sha256`.

Layout: `core/` is the format (reading, writing, the commit protocol), `loader.py` the training stream,
`interchange/` the import/export of other tools' files, `tools.py` and `cli.py` the `osae store` commands
(`integrity.py`: what `verify` checks).
"""

from osae.store.core.buffered_writer import StoreWriter
from osae.store.core.digest import file_sha256
from osae.store.core.format import hook_spec
from osae.store.core.layout import store_exists
from osae.store.core.manifest import store_fingerprint
from osae.store.core.normalize import NORMALIZATIONS, Normalizer
from osae.store.core.reader import ActivationStore, to_float32, to_torch
from osae.store.core.shard_writer import ShardPayload, ShardSink, ShardWriter
from osae.store.core.split import SplitIntervals, split_intervals
from osae.store.interchange.exporter import export_rows
from osae.store.interchange.importer import import_activations
from osae.store.loader import LoaderConfig, ShuffledLoader, iter_split_rows
from osae.store.rows import RowBatch, iter_rows, load_rows
from osae.store.tools import copy as copy_store
from osae.store.tools import info as store_info
from osae.store.tools import verify as verify_store

__all__ = [
    "ActivationStore",
    "LoaderConfig",
    "NORMALIZATIONS",
    "Normalizer",
    "RowBatch",
    "iter_rows",
    "load_rows",
    "ShardPayload",
    "ShardSink",
    "ShardWriter",
    "ShuffledLoader",
    "SplitIntervals",
    "StoreWriter",
    "copy_store",
    "export_rows",
    "file_sha256",
    "hook_spec",
    "import_activations",
    "iter_split_rows",
    "split_intervals",
    "store_exists",
    "store_fingerprint",
    "store_info",
    "to_float32",
    "to_torch",
    "verify_store",
]
