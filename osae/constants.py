"""File names, format versions and defaults shared by every stage."""

STORE_FORMAT_VERSION = 1
# Stores whose format version is in this set can be read by this osae.
READABLE_STORE_FORMATS = frozenset({1})

# Root-group attribute key holding all osae metadata of a store.
STORE_ATTR_KEY = "osae"
ACTS_GROUP = "acts"
DIGESTS_GROUP = "digests"
SEQUENCES_GROUP = "sequences"
GROUND_TRUTH_GROUP = "ground_truth"
ROW_ARRAYS = ("tokens", "seq_id", "position")

# A local writer lock file inside the store directory (flock-based, released by the kernel on death).
LOCK_FILE = ".osae-writer.lock"
# A remote writer lease (object stores have no flock); a lease older than this is considered abandoned.
REMOTE_LEASE_FILE = "osae-writer.lease.json"
REMOTE_LEASE_SECONDS = 120.0

# About 16 MiB per chunk was the fastest read and write unit measured (docs/store-format.md).
TARGET_CHUNK_BYTES = 16 * 2**20
# Shards group this many chunks into one file (128 MiB at the target chunk size).
CHUNKS_PER_SHARD = 8
MIN_CHUNK_ROWS = 256

DEFAULT_EVAL_FRACTION = 0.02
# New stores hold out at least this many rows (whole chunks, up to half the store) when the fraction gives fewer:
# FVU, CE and Stab/Ord on a few thousand tokens are too noisy to compare SAEs by.
MIN_EVAL_ROWS = 100_000
DEFAULT_LOADER_BUFFER_BYTES = 1 * 2**30
# Read before the first batch (4 chunks of the default size); the loader's buffer grows from there.
DEFAULT_LOADER_FIRST_FILL_BYTES = 64 * 2**20
# Chunk reads in flight at once: two on a cold local disk read 7% faster than one (benchmarks/big_store.py);
# on loopback S3 and HTTP two also beat one and eight (0.68-0.79x of one whole-object stream against
# 0.56-0.64x with eight: there the CPU, not the round trip, is the limit). A link with real latency may want
# more: LoaderConfig.read_workers (benchmarks/remote_store.py).
DEFAULT_READ_WORKERS = 2
