"""A store's digest manifest (the committed chunks' digests) and its content fingerprint.

Full chunks' digests live in digests/<array path>; a partial last chunk's in the commit record. The
fingerprint (`digest.fingerprint`) hashes the manifest with the shapes and dtypes: identical for a
recompressed copy, different for any other content.
"""

from __future__ import annotations

import numpy as np

from osae.constants import DIGESTS_GROUP
from osae.errors import StoreError
from osae.store.core.digest import fingerprint
from osae.store.core.layout import row_paths
from osae.store.core.reader import ActivationStore


def row_array_paths(store: ActivationStore) -> list[str]:
    """Paths of the store's row arrays: acts/<hook> for every hook, then tokens, seq_id, position if it has them."""
    return row_paths(store.meta)


def manifest(store: ActivationStore) -> dict[str, np.ndarray] | None:
    """Committed chunk digests of every row array, or None if the store has none."""
    out = {}
    n_full = store.n_tokens // store.chunk_rows
    tail = store.commit.get("tail_digests", {})
    for p in row_array_paths(store):
        if n_full:
            try:
                full = store.array(f"{DIGESTS_GROUP}/{p}")[:n_full]
            except StoreError:
                return None
            except ValueError as exc:  # zarr's failed crc32c of a damaged digest chunk
                raise StoreError(
                    f"the chunk digests of '{p}' in {store.loc.display} are damaged ({str(exc).split('.')[0]}); "
                    f"run `osae store verify` on it"
                ) from None
        else:
            full = np.empty(0, np.uint64)
        if n_full < store.n_chunks:
            if p not in tail:
                return None
            full = np.append(full, np.uint64(int(tail[p])))
        out[p] = full
    return out


def store_fingerprint(store: ActivationStore) -> str | None:
    """The content fingerprint of the store's committed rows (hex), or None if it has no digest manifest."""
    m = manifest(store)
    return None if m is None else fingerprint(store.meta, m)
