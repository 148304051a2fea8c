"""Run a model over token windows and write the hooked activations to a store, in one or many processes.

Layout: window w has the same `R` stored rows in every packed harvest (context_size - 1 without BOS), so
its rows are [w * R, (w + 1) * R) whatever the process count. Work is split by shards: in round j, rank r
computes shard `first + j * W + r` (the windows overlapping it) and writes that whole shard; rank 0 then
commits the round (digests, statistics, sequences, row count) under the store's writer lock. A killed run
leaves whole committed rounds; re-running the same command continues at the first uncommitted shard, and
the result equals an uninterrupted run, with any number of processes.

`document` windows have a variable number of rows; they are written by one process through the buffered
writer, and resume by skipping the rows already committed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from osae.constants import MIN_EVAL_ROWS
from osae.distributed import broadcast, gather, init_distributed
from osae.errors import StoreError, UsageError
from osae.harvest.config import IDENTITY, HarvestConfig
from osae.harvest.hooks import HookPoint, capture, find_blocks, run_to_hooks
from osae.harvest.models import LoadedModel, load_model
from osae.harvest.sources import resolve_source
from osae.harvest.windows import SpecialTokens, iter_windows, stored_positions
from osae.progress import progress as progress_bar
from osae.store import (
    ActivationStore,
    ShardPayload,
    ShardSink,
    ShardWriter,
    StoreWriter,
    hook_spec,
    store_exists,
)

log = logging.getLogger(__name__)


# -- the harvest -----------------------------------------------------------------------------------
@dataclass
class Plan:
    rows_per_window: int
    n_windows: int
    total_rows: int


def _identity(cfg: HarvestConfig, lm: LoadedModel, source_desc: dict, store_dtype: str) -> dict:
    values = {
        **cfg.to_dict(),
        "model_source": lm.source,
        "revision": lm.revision,
        "dataset": source_desc,
        "store_dtype": store_dtype,
    }
    return {k: values[k] for k in IDENTITY}


def _store_dtype(cfg: HarvestConfig, lm: LoadedModel) -> str:
    if cfg.store_dtype != "auto":
        return cfg.store_dtype
    return "bfloat16" if lm.dtype == torch.bfloat16 else "float16"


def _to_storage(x: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy().view(np.uint16)
    return x.to(getattr(torch, dtype)).cpu().numpy()


def _open_or_create(
    cfg: HarvestConfig, identity: dict, hooks: dict, plan: Plan, provenance: dict
) -> ShardWriter | StoreWriter:
    """Rank 0: a writer on a fresh store, or on the interrupted store of an identical earlier run. Packed
    windows are written shard by shard (`ShardWriter`), document windows through the buffered `StoreWriter`."""
    writer_type = ShardWriter if cfg.windows == "packed" else StoreWriter
    if store_exists(cfg.out) and not cfg.overwrite:
        store = ActivationStore(cfg.out, quiet=True)
        where = store.loc.display
        before = store.provenance.get("harvest_identity")
        if before is None:
            raise StoreError(f"{where} exists and was not written by osae harvest; pass --overwrite to replace it")
        diff = [_difference(k, before.get(k), identity[k]) for k in IDENTITY if before.get(k) != identity[k]]
        if diff:
            raise StoreError(
                f"{where} was harvested with other arguments ({'; '.join(diff)}); "
                f"pass --overwrite to replace it or choose another --out"
            )
        if store.complete:
            raise _AlreadyComplete(store.n_tokens)
        log.info("resuming %s at %d committed tokens", where, store.n_tokens)
        return writer_type.resume(cfg.out)
    return writer_type.create(
        cfg.out,
        hooks=hooks,
        has_tokens=True,
        context_size=cfg.context_size,
        provenance=provenance,
        compressor=cfg.compressor,
        expected_rows=plan.total_rows if cfg.windows == "packed" else cfg.tokens,
        split={"rule": "hash-chunks", "eval_fraction": cfg.eval_fraction, "seed": 0, "min_eval_rows": MIN_EVAL_ROWS},
        overwrite=cfg.overwrite,
    )


def _difference(key: str, old, new) -> str:
    """One readable item of an identity mismatch (datasets are named by id, not dumped)."""
    if isinstance(old, dict) and isinstance(new, dict):
        if old.get("id") == new.get("id"):
            return f"{key}: {old.get('id')!r} with other files or contents"
        old, new = old.get("id"), new.get("id")
    return f"{key}: {old!r} -> {new!r}"


class _AlreadyComplete(Exception):
    def __init__(self, n: int):
        self.n = n


def harvest(cfg: HarvestConfig, *, progress: bool = True) -> dict:
    """Harvest `cfg.tokens` activations per hook into `cfg.out`. Returns a summary (rank 0)."""
    rank, world = init_distributed()
    device = cfg.device
    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    lm = load_model(
        cfg.model, revision=cfg.revision, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code
    )
    n_blocks = len(find_blocks(lm.model)[0])
    bad = [layer for layer in cfg.layers if layer >= n_blocks]
    if bad:
        raise UsageError(f"layer {bad[0]} is out of range: {lm.name} has layers 0..{n_blocks - 1}")
    if world > 1 and cfg.windows != "packed":
        raise UsageError("--windows document runs in one process; use packed windows with several processes")
    points = [HookPoint(cfg.hook, layer) for layer in cfg.layers]
    source = resolve_source(cfg.dataset, text_column=cfg.text_column, split=cfg.split, config=cfg.dataset_config)
    documents = _non_empty(source.documents(), source.name)  # fails here, before any store is created
    source_desc = source.describe()
    specials = SpecialTokens.of(lm.tokenizer)
    has_bos = specials.bos is not None
    rows_per_window = cfg.context_size - (0 if cfg.include_bos or not has_bos else 1)
    n_windows = -(-cfg.tokens // rows_per_window)
    plan = Plan(rows_per_window, n_windows, n_windows * rows_per_window)
    store_dtype = _store_dtype(cfg, lm)
    d_model = int(lm.model.config.hidden_size)
    hooks = {p.name: hook_spec(p.layer, d_model, store_dtype, p.hook) for p in points}
    identity = _identity(cfg, lm, source_desc, store_dtype)
    provenance = {
        "model": lm.describe(),
        "dataset": source_desc,
        "tokenizer": {
            "name": getattr(lm.tokenizer, "name_or_path", None),
            "vocab_size": len(lm.tokenizer),
            "bos_token_id": specials.bos,
            "eos_token_id": specials.eos,
            "pad_token_id": specials.pad,
        },
        "bos": "stored" if cfg.include_bos or not has_bos else "excluded (position 0 of every window)",
        "padding": "never stored",
        "windows": cfg.windows,
        "harvest_args": cfg.to_dict(),
        "harvest_identity": identity,
        "processes": world,
    }

    writer = None
    status = {"error": None, "complete": None, "committed": 0}
    if rank == 0:
        try:
            writer = _open_or_create(cfg, identity, hooks, plan, provenance)
            if cfg.windows == "packed":
                writer.reserve(plan.total_rows)
            status["committed"] = writer.committed
        except _AlreadyComplete as done:
            status["complete"] = done.n
        except Exception as exc:  # shared with the other ranks so that they stop too
            status["error"] = exc
    shared = broadcast({k: (str(v) if k == "error" and v is not None else v) for k, v in status.items()}, world)
    if status["error"] is not None:
        raise status["error"]
    if shared["error"] is not None:
        raise StoreError(shared["error"])
    if shared["complete"] is not None:
        log.info("%s is already complete (%d tokens); nothing to do", cfg.out, shared["complete"])
        return {"out": cfg.out, "n_tokens": shared["complete"], "already_complete": True}
    try:
        windows = iter_windows(lm.tokenizer, documents, cfg.context_size, cfg.windows)
        if cfg.windows == "packed":
            _run_packed(
                cfg, lm, points, windows, plan, writer, shared["committed"], rank, world, store_dtype, has_bos, progress
            )
        else:
            _run_document(cfg, lm, points, windows, writer, store_dtype, has_bos, progress)
        if rank == 0:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if rank == 0:
        store = ActivationStore(cfg.out, quiet=True)
        return {"out": cfg.out, "n_tokens": store.n_tokens, "hooks": sorted(store.hooks), "processes": world}
    return {}


def _non_empty(documents: Iterator[str], name: str) -> Iterator[str]:
    """The documents, after checking (by reading up to the first one with text) that there is some text."""
    skipped = 0
    for doc in documents:
        if doc.strip():
            break
        skipped += 1
    else:
        raise UsageError(f"dataset {name} holds no text ({skipped} empty documents)")

    def chained():
        yield doc
        yield from documents

    return chained()


def _forward_rows(
    lm: LoadedModel, points, batch: np.ndarray, positions: list[np.ndarray], store_dtype: str, cache: dict
) -> dict[str, list[np.ndarray]]:
    """Stored rows of every hook for a batch of windows (padding as the pad token, masked out)."""
    padded = bool((batch < 0).any())
    ids = torch.from_numpy(np.where(batch >= 0, batch, 0) if padded else batch).long().to(lm.device)
    # Full windows need no mask: the model then takes its plain causal path, as a bare forward would.
    mask = torch.from_numpy(batch >= 0).long().to(lm.device) if padded else None
    try:
        acts = run_to_hooks(lm.model, ids, cache, attention_mask=mask)
    except torch.cuda.OutOfMemoryError:
        raise UsageError(
            f"out of GPU memory with --batch-size {len(batch)}; try --batch-size {max(1, len(batch) // 2)}"
        ) from None
    same = all(len(p) == len(positions[0]) and p[0] == positions[0][0] for p in positions)
    out = {}
    for p in points:
        a = acts[p.name]
        if same and len(positions[0]):  # every window keeps the same contiguous positions: one slice, one copy
            first, n = int(positions[0][0]), len(positions[0])
            rows = _to_storage(a[:, first : first + n].reshape(-1, a.shape[-1]), store_dtype)
            out[p.name] = np.split(rows, len(batch))
        else:
            out[p.name] = [
                _to_storage(a[i, torch.from_numpy(pos).long()], store_dtype) for i, pos in enumerate(positions)
            ]
    return out


@dataclass
class _RanOut:
    """The dataset held only `n_windows` windows: every range from here on ends at that window."""

    n_windows: int


def _window_batches(windows: Iterator[np.ndarray], wanted: Iterator[tuple[int, int]], batch_size: int):
    """Yield lists of (window index, window) for the ascending window ranges in `wanted`; each range ends
    with None, or, once the dataset has run out, with a `_RanOut` (after the windows it still had)."""
    index = -1
    pending: list[tuple[int, np.ndarray]] = []
    for lo, hi in wanted:
        for w in range(lo, hi):
            while index < w:
                window = next(windows, None)
                if window is None:
                    if pending:
                        yield pending
                    while True:  # every later range is empty too
                        yield _RanOut(index + 1)
                index += 1
            pending.append((w, window))
            if len(pending) == batch_size:
                yield pending
                pending = []
        if pending:
            yield pending
            pending = []
        yield None  # end of this range


def _run_packed(
    cfg,
    lm,
    points,
    windows,
    plan: Plan,
    writer: ShardWriter | None,
    committed: int,
    rank: int,
    world: int,
    store_dtype: str,
    has_bos: bool,
    progress: bool,
) -> None:
    # Every rank writes its own shards; rank 0, which holds the writer, commits each round.
    sink = writer.sink() if rank == 0 else ShardSink.open(cfg.out)
    S, R = sink.shard_rows, plan.rows_per_window
    n_shards = -(-plan.total_rows // S)
    first = committed // S
    my_shards = list(range(first + rank, n_shards, world))
    n_rounds = -(-(n_shards - first) // world)

    def shard_windows():
        for k in my_shards:
            lo, hi = k * S, min((k + 1) * S, plan.total_rows)
            yield lo // R, -(-hi // R)

    batches = _window_batches(windows, shard_windows(), cfg.batch_size)
    bar = progress_bar(
        plan.total_rows,
        "harvest",
        "tok",
        enabled=progress and rank == 0,
        initial=committed,
        unit_scale=True,
        smoothing=0.1,
    )
    with _closing(bar), capture(lm.model, points) as store_cache:
        for j in range(n_rounds):
            k = first + j * world + rank
            result = (None, None)
            if k < n_shards:
                result = _compute_shard(
                    k, S, R, plan, cfg, lm, points, batches, store_cache, store_dtype, has_bos, sink
                )
            gathered = gather(result, world)
            # Every rank reads the same windows, so all see the dataset end at the same row.
            ends = [end for _, end in gathered if end is not None]
            end = min(ends, default=plan.total_rows)
            done = min(end, (first + (j + 1) * world) * S)
            if rank == 0 and done > writer.committed:
                writer.commit_shards(done, [p for p, _ in gathered if p is not None and p.shard * S < done])
                bar.update(done - bar.n)
            if ends:
                if rank == 0:
                    log.warning(
                        "the dataset ran out after %d tokens (asked for %d); the store holds those", end, cfg.tokens
                    )
                return


class _closing:
    """Close a progress bar; on an error, erase it so that the error stands alone on its line."""

    def __init__(self, bar):
        self.bar = bar

    def __enter__(self):
        return self.bar

    def __exit__(self, exc_type, *rest):
        if exc_type is not None:
            self.bar.leave = False
        self.bar.close()


def _compute_shard(
    k, S, R, plan, cfg, lm, points, batches, store_cache, store_dtype, has_bos, sink: ShardSink
) -> tuple[ShardPayload | None, int | None]:
    """Shard k's rows, written through `sink`: (its payload, None), or, where the dataset ran out, (the payload
    of the rows it still had or None, the number of rows the dataset holds)."""
    lo, hi = k * S, min((k + 1) * S, plan.total_rows)
    w_lo = lo // R
    acts = {p.name: [] for p in points}
    tokens, seq_ids, positions = [], [], []
    contexts, starts = [], []
    end = None
    while True:
        item = next(batches)
        if isinstance(item, _RanOut):
            end = item.n_windows * R
            hi = min(hi, end)
            break
        if item is None:
            break
        batch = np.stack([w for _, w in item])
        pos = [stored_positions(w, cfg.include_bos, has_bos) for _, w in item]
        rows = _forward_rows(lm, points, batch, pos, store_dtype, store_cache)
        for name in acts:
            acts[name].extend(rows[name])
        for (w, window), ps in zip(item, pos):
            tokens.append(window[ps])
            seq_ids.append(np.full(len(ps), w, np.int64))
            positions.append(ps)
            if lo <= w * R < hi:  # sequences are recorded by the shard holding their first row
                starts.append(w * R)
                contexts.append(window)
    if hi <= lo:  # the dataset ended before this shard
        return None, end
    cut = slice(lo - w_lo * R, hi - w_lo * R)
    data = {f"acts/{name}": np.concatenate(v)[cut] for name, v in acts.items()}
    data["tokens"] = np.concatenate(tokens)[cut].astype(np.int32)
    data["seq_id"] = np.concatenate(seq_ids)[cut]
    data["position"] = np.concatenate(positions)[cut].astype(np.int32)
    payload = sink.write_shard(
        k, data, seq_starts=np.asarray(starts, np.int64), seq_context=np.stack(contexts) if contexts else None
    )
    return payload, end


def _run_document(
    cfg, lm, points, windows, writer: StoreWriter, store_dtype: str, has_bos: bool, progress: bool
) -> None:
    """One process: variable rows per window through the buffered writer; resume skips committed rows."""
    skip = writer.committed
    bar = progress_bar(cfg.tokens, "harvest", "tok", enabled=progress, initial=min(skip, cfg.tokens), unit_scale=True)
    row = 0
    w_index = -1
    with _closing(bar), capture(lm.model, points) as cache:
        batch: list[tuple[int, np.ndarray]] = []

        def flush(batch):
            nonlocal row
            arr = np.stack([w for _, w in batch])
            pos = [stored_positions(w, cfg.include_bos, has_bos) for _, w in batch]
            rows = _forward_rows(lm, points, arr, pos, store_dtype, cache)
            for i, ((w, window), ps) in enumerate(zip(batch, pos)):
                n = len(ps)
                drop = max(0, min(n, skip - row))  # rows already committed by an earlier run
                if drop < n:
                    if drop == 0:
                        writer.add_sequences(np.array([row]), window[None])
                    writer.write(
                        {name: rows[name][i][drop:] for name in rows},
                        tokens=window[ps][drop:],
                        seq_id=np.full(n - drop, w, np.int64),
                        position=ps[drop:],
                    )
                    bar.update(n - drop)
                row += n

        for window in windows:
            w_index += 1
            batch.append((w_index, window))
            est = row + sum(len(stored_positions(w, cfg.include_bos, has_bos)) for _, w in batch)
            if len(batch) == cfg.batch_size or est >= cfg.tokens:
                # Windows entirely below the committed rows need no forward pass.
                sizes = [len(stored_positions(w, cfg.include_bos, has_bos)) for _, w in batch]
                if row + sum(sizes) <= skip:
                    row += sum(sizes)
                else:
                    flush(batch)
                batch = []
                if row >= cfg.tokens:
                    break
        else:
            if batch:
                flush(batch)
            if row == 0:
                raise UsageError("the dataset ran out after 0 windows: it holds no text")
            if row < cfg.tokens:
                log.warning("the dataset ran out after %d tokens (asked for %d)", row, cfg.tokens)
