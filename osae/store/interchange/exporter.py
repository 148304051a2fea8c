"""`osae store export`: committed rows of one hook out to .npy or .safetensors, streamed chunk by chunk.

Files are written under a temporary name and renamed when complete, so a crash never leaves a truncated
file in place of a good one. float16/float32 go to .npy as they are; bfloat16 (no .npy type) goes to
.safetensors as BF16, bit-exact, or to .npy after `--dtype float32` (exact widening).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from osae.errors import UsageError
from osae.progress import progress as progress_bar
from osae.store.core.reader import ActivationStore, to_float32

ST_DTYPES = {"float16": "F16", "float32": "F32", "bfloat16": "BF16", "int32": "I32", "int64": "I64"}


def parse_rows(text: str | None, n: int) -> tuple[int, int]:
    """'A:B' (either side may be empty; negative counts from the end) -> [a, b) clipped to n rows."""
    if not text:
        return 0, n
    try:
        a, b = text.split(":")
        lo, hi = (int(a) if a else 0), (int(b) if b else n)
    except ValueError:
        raise UsageError(f"--rows must look like A:B (e.g. 0:100000 or :-1000); got {text!r}") from None
    lo, hi = (lo + n if lo < 0 else lo), (hi + n if hi < 0 else hi)
    if not 0 <= lo < hi <= n:
        raise UsageError(f"--rows {text} selects nothing of the store's {n} committed rows")
    return lo, hi


def export_rows(
    store_url,
    hook: str | None,
    out,
    *,
    rows: str | None = None,
    dtype: str = "auto",
    tokens: bool = True,
    part_rows: int | None = None,
    progress: bool = True,
) -> dict:
    store = ActivationStore(store_url)
    hook = store.resolve_hook(hook)
    lo, hi = parse_rows(rows, store.n_tokens)
    src_dtype = store.dtype(hook)
    out_dtype = src_dtype if dtype == "auto" else dtype
    if out_dtype not in ("float16", "float32", "bfloat16"):
        raise UsageError(f"--dtype must be auto, float16, float32 or bfloat16; got {dtype!r}")
    if out_dtype not in (src_dtype, "float32"):
        raise UsageError(f"the store holds {src_dtype}; export converts only to float32 (exact), not to {out_dtype}")
    out = Path(out)
    fmt = out.suffix if out.suffix in (".npy", ".safetensors") else None
    if fmt == ".npy" and out_dtype == "bfloat16":
        raise UsageError(
            f"{hook} is bfloat16, which .npy cannot hold; export to a .safetensors file, or pass "
            f"--dtype float32 (exact)"
        )
    with_tokens = tokens and store.has_tokens
    bar = progress_bar(hi - lo, "export", "row", enabled=progress, unit_scale=True)
    written = []
    if fmt is not None:
        written.append(
            _write_file(store, hook, out, lo, hi, src_dtype, out_dtype, with_tokens and fmt == ".safetensors", bar)
        )
    else:
        if out.exists() and any(out.iterdir()):
            raise UsageError(f"{out} exists and is not empty; choose a new directory")
        out.mkdir(parents=True, exist_ok=True)
        step = part_rows or store.shard_rows
        suffix = ".npy" if out_dtype != "bfloat16" else ".safetensors"
        for i, a in enumerate(range(lo, hi, step)):
            written.append(
                _write_file(
                    store,
                    hook,
                    out / f"part-{i:05d}{suffix}",
                    a,
                    min(hi, a + step),
                    src_dtype,
                    out_dtype,
                    with_tokens and suffix == ".safetensors",
                    bar,
                )
            )
    bar.close()
    return {"files": [str(p) for p in written], "rows": hi - lo, "hook": hook, "dtype": out_dtype}


def _write_file(store, hook, path: Path, lo, hi, src_dtype, out_dtype, with_tokens, bar) -> Path:
    d = store.d_model(hook)
    n = hi - lo
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if path.suffix == ".npy":
                np.lib.format.write_array_header_1_0(  # the header np.save writes: identical files
                    f,
                    {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(out_dtype)),
                        "fortran_order": False,
                        "shape": (n, d),
                    },
                )
                _stream(store, f"acts/{hook}", f, lo, hi, src_dtype, out_dtype, bar)
            else:
                tensors = {hook: (ST_DTYPES[out_dtype], [n, d], n * d * (2 if out_dtype != "float32" else 4))}
                if with_tokens:
                    tensors.update(tokens=("I32", [n], 4 * n), position=("I32", [n], 4 * n), seq_id=("I64", [n], 8 * n))
                _write_safetensors_header(f, tensors, {"osae_store": store.loc.display, "rows": f"{lo}:{hi}"})
                _stream(store, f"acts/{hook}", f, lo, hi, src_dtype, out_dtype, bar)
                if with_tokens:
                    for name in ("tokens", "position", "seq_id"):
                        _stream(store, name, f, lo, hi, None, None, None)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_safetensors_header(f, tensors: dict[str, tuple[str, list[int], int]], metadata: dict[str, str]) -> None:
    header, offset = {"__metadata__": metadata}, 0
    for name, (dt, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    f.write(struct.pack("<Q", len(raw)) + raw)


def _stream(store, path: str, f, lo: int, hi: int, src_dtype, out_dtype, bar) -> None:
    step = store.chunk_rows
    for a in range(lo, hi, step):
        block = store.read_rows(path, a, min(hi, a + step))
        if src_dtype is not None and out_dtype != src_dtype:
            block = to_float32(block, src_dtype)
        f.write(np.ascontiguousarray(block).data)
        if bar is not None:
            bar.update(len(block))
