"""Token windows: the sequences the model sees.

`packed` (default): documents are tokenized, each followed by EOS, and concatenated; every window is the
BOS token followed by the next `context_size - 1` tokens of that stream, so all windows are full and a
window may span documents (SAELens' default). `document`: each document gives its own windows (long ones
are split), BOS first, shorter ones padded; padding is never stored.

Windows are numbered from 0 in a fixed order, so a resumed or multi-process harvest can pick any range.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from osae.errors import UsageError

WINDOW_MODES = ("packed", "document")


@dataclass(frozen=True)
class SpecialTokens:
    bos: int | None
    eos: int | None
    pad: int | None

    @classmethod
    def of(cls, tokenizer) -> SpecialTokens:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(bos, tokenizer.eos_token_id, pad)


def _token_batches(tokenizer, documents: Iterable[str], batch: int = 64) -> Iterator[list[int]]:
    buf: list[str] = []
    for doc in documents:
        buf.append(doc)
        if len(buf) == batch:
            yield from tokenizer(buf, add_special_tokens=False)["input_ids"]
            buf = []
    if buf:
        yield from tokenizer(buf, add_special_tokens=False)["input_ids"]


def iter_windows(tokenizer, documents: Iterable[str], context_size: int, mode: str = "packed") -> Iterator[np.ndarray]:
    """Yield int32 windows of `context_size` tokens; in `document` mode shorter ones end in -1 padding."""
    if mode not in WINDOW_MODES:
        raise UsageError(f"windows must be one of {WINDOW_MODES}; got {mode!r}")
    if context_size < 2:
        raise UsageError(f"context_size must be at least 2; got {context_size}")
    sp = SpecialTokens.of(tokenizer)
    lead = [sp.bos] if sp.bos is not None else []
    body = context_size - len(lead)
    if mode == "packed":
        pending: list[int] = []
        for ids in _token_batches(tokenizer, documents):
            pending.extend(ids)
            if sp.eos is not None:
                pending.append(sp.eos)
            while len(pending) >= body:
                yield np.asarray(lead + pending[:body], dtype=np.int32)
                pending = pending[body:]
        return
    for ids in _token_batches(tokenizer, documents):
        for start in range(0, max(len(ids), 1), body):
            piece = ids[start : start + body]
            if not piece:
                continue
            window = np.full(context_size, -1, dtype=np.int32)
            window[: len(lead) + len(piece)] = lead + piece
            yield window


def stored_positions(window: np.ndarray, include_bos: bool, has_bos: bool) -> np.ndarray:
    """Positions of a window whose activations are stored: not padding, and not BOS unless asked."""
    n = int((window >= 0).sum())
    first = 0 if (include_bos or not has_bos) else 1
    return np.arange(first, n, dtype=np.int32)
