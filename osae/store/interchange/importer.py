"""`osae store import`: activations from .npy, .safetensors or Arrow (SAELens caches) into a store.

Rows go through the buffered `StoreWriter`: whole shards are committed with their checksums, digests and
running statistics, so an interrupted import resumes at its committed rows (the sources' paths and sizes and
the import settings must match; their sha256 is recorded when the import completes), and memory stays at
one block plus one shard whatever the source size.
Token ids, positions and sequence windows are imported when the source has them (sequence-shaped data).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from osae.constants import DEFAULT_EVAL_FRACTION, MIN_EVAL_ROWS
from osae.errors import StoreError, UsageError
from osae.progress import progress as progress_bar
from osae.store.core.buffered_writer import StoreWriter
from osae.store.core.digest import file_sha256
from osae.store.core.format import hook_spec, storage_dtype
from osae.store.core.layout import store_exists
from osae.store.core.location import parse_location
from osae.store.core.reader import ActivationStore
from osae.store.interchange.import_sources import Block, Part, open_parts

log = logging.getLogger(__name__)
HOOK_NAME = re.compile(r"blocks\.(\d+)\.hook_(\w+)$")
DTYPE_CHOICES = ("auto", "float16", "float32", "bfloat16")


def import_activations(
    src,
    out,
    *,
    hook: str | None = None,
    layer: int | None = None,
    dtype: str = "auto",
    column: str | None = None,
    tokens_column: str | None = None,
    tensor: str | None = None,
    drop_nonfinite: bool = False,
    append: bool = False,
    compressor: str = "none",
    model: str | None = None,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
    progress: bool = True,
) -> dict:
    if dtype not in DTYPE_CHOICES:
        raise UsageError(f"--dtype must be one of {list(DTYPE_CHOICES)}; got {dtype!r}")
    src = Path(src)
    parts = open_parts(src, column=column, tokens_column=tokens_column, tensor=tensor)
    names = _hook_names(parts, hook)
    widths, src_dtypes = _check_parts(parts)
    target = {h: _target_dtype(dtype, src_dtypes[i]) for i, h in enumerate(names)}
    seq_lens = {p.seq_len for p in parts}
    context = seq_lens.pop() if len(seq_lens) == 1 and parts[0].has_tokens else None
    hooks = {}
    for i, h in enumerate(names):
        lay, kind = _layer_and_kind(h, layer)
        hooks[h] = hook_spec(lay, widths[i], target[h], hook=kind)
    has_tokens = parts[0].has_tokens
    identity = {
        "sources": [{"path": str(p.path.resolve()), "bytes": p.path.stat().st_size} for p in parts],
        "hooks": names,
        "dtype": {h: target[h] for h in names},
        "column": column,
        "tensor": tensor,
        "tokens_column": tokens_column,
        "layer": layer,
    }
    writer, first_row = _open_writer(
        out, identity, hooks, has_tokens, context, append, compressor, model, eval_fraction, parts
    )
    try:
        stats = _copy_rows(writer, parts, names, target, first_row, drop_nonfinite, progress)
        prov = writer.meta["provenance"]
        imp = prov["imports"][-1]
        imp.update(
            rows=stats["kept"],
            nonfinite_dropped=stats["dropped"],
            sources=[{**s, "sha256": file_sha256(s["path"])} for s in identity["sources"]],
        )
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return {
        "out": str(out),
        "rows": stats["kept"],
        "dropped": stats["dropped"],
        "hooks": names,
        "has_tokens": has_tokens,
        "store_rows": writer.committed,
        "resumed_at": stats["resumed_at"],
    }


# -- planning ---------------------------------------------------------------------------------------
def _hook_names(parts: list[Part], hook: str | None) -> list[str]:
    per_part = [list(p.hooks) for p in parts]
    if all(len(h) == 1 for h in per_part):
        if hook:
            return [hook]
        name = per_part[0][0]
        # A file name (.npy stem) says nothing about the hook; tensor and column names usually do.
        return [
            name
            if (HOOK_NAME.search(name) or parts[0].path.suffix != ".npy") and all(h == per_part[0] for h in per_part)
            else "imported"
        ]
    if any(h != per_part[0] for h in per_part):
        raise UsageError(
            f"files disagree on their tensors: {parts[0].path.name} has {per_part[0]}, "
            f"{next(p.path.name for p, h in zip(parts, per_part) if h != per_part[0])} has "
            f"{next(h for h in per_part if h != per_part[0])}"
        )
    if hook:
        raise UsageError(
            f"{parts[0].path.name} holds several tensors {per_part[0]}; pick one with --tensor, "
            f"or leave out --hook to import each as its own hook"
        )
    return per_part[0]


def _check_parts(parts: list[Part]) -> tuple[list[int], list[str]]:
    """Widths and source dtypes of the hooks (in order), refusing parts that disagree."""
    ref = list(parts[0].hooks.values())
    for p in parts[1:]:
        got = list(p.hooks.values())
        for (w0, d0), (w, d) in zip(ref, got):
            if w != w0:
                raise UsageError(
                    f"mismatched widths: {parts[0].path.name} has rows of {w0} values, {p.path.name} "
                    f"has {w}; import files of one width"
                )
            if d != d0:
                raise UsageError(
                    f"mismatched dtypes: {parts[0].path.name} is {d0}, {p.path.name} is {d}; convert "
                    f"them to one dtype first"
                )
        if p.has_tokens != parts[0].has_tokens:
            raise UsageError(f"{parts[0].path.name} and {p.path.name} disagree on token ids (one has them)")
    for p in parts:
        if p.rows == 0:
            raise UsageError(f"{p.path} holds no rows")
    return [w for w, _ in ref], [d for _, d in ref]


def _target_dtype(asked: str, source: str) -> str:
    if asked != "auto":
        return asked
    return "float32" if source == "float64" else source


def _layer_and_kind(name: str, layer: int | None) -> tuple[int | None, str | None]:
    m = HOOK_NAME.search(name)
    if m:
        return (layer if layer is not None else int(m.group(1))), m.group(2)
    return layer, None


def _open_writer(out, identity, hooks, has_tokens, context, append, compressor, model, eval_fraction, parts):
    """(writer, store row where this import's rows begin)."""
    loc = parse_location(out)
    record = {"identity": identity, "first_row": 0, "seq_offset": 0}
    if store_exists(loc):
        store = ActivationStore(out)
        imports = store.meta.get("provenance", {}).get("imports", [])
        if not store.complete and imports and imports[-1]["identity"] == identity:
            log.info("resuming the import into %s at row %d", loc.display, store.n_tokens)
            return StoreWriter.resume(out), int(imports[-1]["first_row"])
        if not store.complete:
            raise StoreError(
                f"{loc.display} is an unfinished store written from other sources or settings; "
                f"re-run the command that started it, or import into a new --out"
            )
        if not append:
            raise StoreError(
                f"{loc.display} already exists; pass --append to add these rows to it (same hook and "
                f"width), or choose a new --out"
            )
        longest = max((p.seq_len or 0) for p in parts)
        if has_tokens and store.context_size and longest > store.context_size:
            raise StoreError(
                f"{loc.display} keeps token windows of {store.context_size} positions; these sequences "
                f"have {longest}: import them into a new store"
            )
        writer = StoreWriter.append(out, hooks=hooks, has_tokens=has_tokens)
        record["first_row"] = writer.committed
        record["seq_offset"] = writer.n_sequences  # sequence ids stay unique across imports
        writer.meta["provenance"].setdefault("imports", []).append(record)
        writer.commit_metadata()
        return writer, writer.committed
    if append:
        log.info("%s does not exist yet; --append creates it", loc.display)
    expected = sum(p.rows for p in parts)
    provenance = {
        "model": {"name": model, "source": model} if model else None,
        "dataset": {"id": "imported", "sources": [s["path"] for s in identity["sources"]]},
        "bos": "as in the source",
        "padding": "as in the source",
        "generator": "osae store import",
        "imports": [record],
    }
    split = {"rule": "hash-chunks", "eval_fraction": eval_fraction, "seed": 0, "min_eval_rows": MIN_EVAL_ROWS}
    writer = StoreWriter.create(
        out,
        hooks=hooks,
        has_tokens=has_tokens,
        context_size=context,
        provenance=provenance,
        compressor=compressor,
        expected_rows=expected,
        split=split,
    )
    return writer, 0


# -- copying ----------------------------------------------------------------------------------------
def _copy_rows(
    writer: StoreWriter,
    parts: list[Part],
    names: list[str],
    target: dict[str, str],
    first_row: int,
    drop_nonfinite: bool,
    progress: bool,
) -> dict:
    done_here = writer.committed - first_row  # rows of this import already committed (resume)
    record = writer.meta["provenance"]["imports"][-1]
    # Once any run of this import has dropped rows, store rows no longer map one to one onto source rows:
    # a resume then re-reads from the start (dropping the same rows) to find where the committed rows end;
    # otherwise it seeks there. The flag is saved with the next commit, before any dropped row counts.
    rescan = drop_nonfinite or record.get("dropping", False)
    record["dropping"] = rescan
    skip_source = 0 if rescan else done_here
    to_skip_kept = done_here if rescan else 0
    sequences = SequenceRecorder(writer)
    seq_offset = int(writer.meta["provenance"]["imports"][-1].get("seq_offset", 0))
    total = sum(p.rows for p in parts)
    kept = dropped = 0
    source_row = 0
    bar = progress_bar(total, "import", "row", enabled=progress, initial=skip_source, unit_scale=True)
    for part in parts:
        part_rows = part.rows
        if skip_source >= source_row + part_rows:
            source_row += part_rows
            seq_offset += part_rows // part.seq_len if part.seq_len else 0
            continue
        start = max(0, skip_source - source_row)
        block_rows = writer.chunk_rows if not part.seq_len else max(1, writer.chunk_rows // part.seq_len) * part.seq_len
        for block in part.blocks(start, block_rows):
            acts = {h: _convert(block.acts[k], part.hooks[k][1], target[h]) for h, k in zip(names, part.hooks)}
            good = np.ones(len(next(iter(acts.values()))), dtype=bool)
            for h, a in acts.items():
                good &= _finite_rows(a, target[h])
            if to_skip_kept:  # rows a previous run committed or dropped: skip them as it did
                keep_idx = np.nonzero(good)[0]
                if len(keep_idx) <= to_skip_kept:
                    to_skip_kept -= len(keep_idx)
                    dropped += int((~good).sum())
                    start += len(good)
                    bar.update(len(good))
                    continue
                cut = keep_idx[to_skip_kept]  # first row not yet committed
                dropped += int((~good[:cut]).sum())
                good[:cut] = False
                fresh = np.zeros(len(good), dtype=bool)
                fresh[cut:] = True
                to_skip_kept = 0
            else:
                fresh = np.ones(len(good), dtype=bool)
            n_bad = int((~good & fresh).sum())
            if n_bad and not drop_nonfinite:
                first_bad = source_row + start + int(np.argmax(~good & fresh))
                raise UsageError(
                    f"{part.path}: {n_bad} row(s) with NaN/Inf in rows {source_row + start}.."
                    f"{source_row + start + len(good) - 1} (first: source row {first_bad}); pass "
                    f"--drop-nonfinite to drop them (the committed rows are kept; re-run to resume)"
                )
            idx = np.nonzero(good)[0]
            rows = {h: a[idx] for h, a in acts.items()}
            if part.has_tokens:
                seq = block.seq_index + seq_offset
                sequences.add(block, seq[idx], idx)
                writer.write(
                    rows,
                    tokens=block.tokens[idx].astype(np.int32),
                    seq_id=seq[idx].astype(np.int64),
                    position=block.positions[idx].astype(np.int32),
                )
            else:
                writer.write(rows)
            kept += len(idx)
            dropped += n_bad
            start += len(good)
            bar.update(len(good))
        source_row += part_rows
        seq_offset += part_rows // part.seq_len if part.seq_len else 0
    bar.close()
    return {"kept": kept + done_here, "dropped": dropped, "resumed_at": done_here}


class SequenceRecorder:
    """Records where sequences begin (and their token windows) as their first kept rows are written.

    On resume the first row continues the sequence of the last committed row when it has the same id (the
    writer itself forgets starts recorded beyond the committed rows).
    """

    def __init__(self, writer: StoreWriter):
        self.writer = writer
        self.last_seq: int | None = None
        if writer.meta["has_tokens"] and writer.committed:
            self.last_seq = int(writer.arrays["seq_id"][writer.committed - 1])

    def add(self, block: Block, seq: np.ndarray, idx: np.ndarray) -> None:
        """`seq`: store sequence ids of the kept rows `idx` of `block`, about to be written."""
        if not len(seq):
            return
        new = np.ones(len(seq), dtype=bool)
        new[1:] = seq[1:] != seq[:-1]
        new[0] = seq[0] != self.last_seq
        self.last_seq = int(seq[-1])
        where = np.nonzero(new)[0]
        if not len(where):
            return
        window = self.writer.meta.get("context_size")
        contexts = None
        if window:
            contexts = np.full((len(where), window), -1, np.int32)  # -1: a position the block did not hold
            for row, j in enumerate(where):
                same = block.seq_index == block.seq_index[idx[j]]
                if block.positions[same].max() >= window:
                    raise UsageError(
                        f"a sequence has positions up to {int(block.positions[same].max())}, beyond the "
                        f"store's windows of {window} tokens: import it into a new store"
                    )
                contexts[row, block.positions[same]] = block.tokens[same]
        self.writer.add_sequences(self.writer.n_rows + where, contexts)


def _convert(a: np.ndarray, source: str, target: str) -> np.ndarray:
    """Source values to the target storage dtype (bfloat16 kept bit-exact; float -> bfloat16 rounds to nearest even)."""
    if source == target:
        return a
    if source == "bfloat16":
        a = (a.astype(np.uint32) << 16).view(np.float32)
    if target == "bfloat16":
        bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        out = (rounded >> 16).astype(np.uint16)
        nan = np.isnan(a)
        out[nan] = 0x7FC0
        return out
    with np.errstate(over="ignore"):
        return a.astype(storage_dtype(target))


def _finite_rows(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return ((a & 0x7F80) != 0x7F80).all(axis=1)
    return np.isfinite(a).all(axis=1)
