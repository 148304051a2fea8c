"""Activation files other tools write, read as row blocks with bounded memory.

Parts: a .npy file (2-D rows or 3-D sequences x positions x width), a .safetensors file (every 2-D/3-D float
tensor is a hook; an integer `tokens`/`token_ids`/`input_ids` tensor of shape (sequences, positions) gives
token ids), or a saved Hugging Face dataset / Arrow directory (SAELens caches: one Array2D column per hook,
optionally `token_ids`). .npy and .safetensors are read with plain positioned reads into one block buffer
(a memory map would leave every page it touched resident); Arrow files are memory-mapped and re-opened
every few hundred MiB for the same reason.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from osae.errors import UsageError

# safetensors dtype names -> (numpy dtype used for the raw bytes, osae dtype name)
SAFETENSORS_DTYPES = {
    "F16": ("float16", "float16"),
    "F32": ("float32", "float32"),
    "F64": ("float64", "float64"),
    "BF16": ("uint16", "bfloat16"),
}
SAFETENSORS_INTS = {"I32": "int32", "I64": "int64", "I16": "int16", "U32": "uint32", "U16": "uint16"}
TOKEN_NAMES = ("tokens", "token_ids", "input_ids")
NPY_DTYPES = {"float16": "float16", "float32": "float32", "float64": "float64"}
ARROW_REOPEN_BYTES = 256 << 20


@dataclass
class Block:
    acts: dict[str, np.ndarray]  # hook -> (n, d) raw values (bfloat16 as uint16 bits)
    tokens: np.ndarray | None = None  # (n,) token ids
    positions: np.ndarray | None = None  # (n,) position within its sequence
    seq_index: np.ndarray | None = None  # (n,) sequence number within the part


@dataclass
class Part:
    path: Path
    rows: int
    hooks: dict[str, tuple[int, str]]  # hook -> (width, osae dtype name)
    seq_len: int | None = None  # rows per sequence (3-D sources and SAELens caches)
    has_tokens: bool = False
    _reader: object = field(default=None, repr=False)

    def blocks(self, start: int, block_rows: int) -> Iterator[Block]:
        """Blocks of at most `block_rows` rows, from row `start` on."""
        return self._reader(self, start, block_rows)


def natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def open_parts(
    src: Path, *, column: str | None = None, tokens_column: str | None = None, tensor: str | None = None
) -> list[Part]:
    """The parts of a source, in import order. Raises ValueError with what was found on bad input."""
    if not src.exists():
        raise UsageError(f"no such file or directory: {src}")
    if src.is_file():
        return [_open_file(src, column, tokens_column, tensor)]
    arrow = list(src.rglob("*.arrow"))
    if arrow or (src / "dataset_info.json").exists() or (src / "state.json").exists():
        if not arrow:
            raise UsageError(f"{src} looks like a saved dataset but holds no .arrow files")
        return [_open_arrow(p, column, tokens_column) for p in _dataset_order(src, arrow)]
    files = sorted((p for p in src.iterdir() if p.suffix in (".npy", ".safetensors")), key=natural_key)
    if not files:
        raise UsageError(f"{src} holds no .npy, .safetensors or .arrow files")
    if len({p.suffix for p in files}) > 1:
        raise UsageError(f"{src} mixes .npy and .safetensors files; import one kind at a time")
    return [_open_file(p, column, tokens_column, tensor) for p in files]


def _dataset_order(src: Path, arrow: list[Path]) -> list[Path]:
    """A dataset's own file order (state.json) when present, else natural order of the paths."""
    state = src / "state.json"
    if state.exists():
        names = [f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
        if names and all((src / n).exists() for n in names):
            return [src / n for n in names]
    return sorted(arrow, key=lambda p: [natural_key(Path(x)) for x in p.relative_to(src).parts])


def _open_file(path: Path, column, tokens_column, tensor) -> Part:
    if path.suffix == ".npy":
        return _open_npy(path)
    if path.suffix == ".safetensors":
        return _open_safetensors(path, tensor)
    if path.suffix == ".arrow":
        return _open_arrow(path, column, tokens_column)
    raise UsageError(f"{path} is not a .npy, .safetensors or .arrow file (or a directory of them)")


# -- .npy -----------------------------------------------------------------------------------------
def _open_npy(path: Path) -> Part:
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
        except ValueError as exc:
            raise UsageError(f"{path} is not a valid .npy file ({exc})") from None
        offset = f.tell()
    if dtype.byteorder == ">":
        raise UsageError(
            f"{path} holds big-endian {dtype}; convert it first: np.save(path, a.astype(a.dtype.newbyteorder('<')))"
        )
    if dtype.name not in NPY_DTYPES:
        raise UsageError(
            f"{path} holds {dtype} values; import needs float16, float32 or float64 "
            f"(bfloat16 has no .npy type: use .safetensors)"
        )
    if fortran and len(shape) > 1:
        raise UsageError(f"{path} is in Fortran order; save it C-contiguous (np.ascontiguousarray)")
    if len(shape) not in (2, 3):
        raise UsageError(f"{path} has shape {shape}; import needs (rows, width) or (sequences, positions, width)")
    rows = int(np.prod(shape[:-1]))
    width = int(shape[-1])
    hook = path.stem
    part = Part(path, rows, {hook: (width, NPY_DTYPES[dtype.name])}, seq_len=int(shape[1]) if len(shape) == 3 else None)
    part._reader = _raw_reader({hook: (offset, dtype, width)})
    return part


def _raw_reader(layout: dict[str, tuple[int, np.dtype, int]], columns: dict[str, tuple[int, np.dtype]] | None = None):
    """Blocks read with positioned reads of C-ordered (rows, width) data at byte `offset` per hook, and of
    per-row integer columns (`tokens`, and `position`/`seq_id` when the file has them)."""
    columns = columns or {}

    def read(part: Part, start: int, block_rows: int) -> Iterator[Block]:
        fd = os.open(part.path, os.O_RDONLY)
        try:
            bufs = {h: np.empty((block_rows, w), dt) for h, (_, dt, w) in layout.items()}
            cbufs = {c: np.empty(block_rows, dt) for c, (_, dt) in columns.items()}
            lo = start
            while lo < part.rows:
                # Blocks end on multiples of block_rows (a multiple of the sequence length), also when a
                # resume starts mid-block, so every block holds whole sequences.
                n = min(block_rows - lo % block_rows, part.rows - lo)
                acts = {
                    h: _pread_into(fd, bufs[h][:n], off + lo * w * dt.itemsize, part.path)
                    for h, (off, dt, w) in layout.items()
                }
                cols = {
                    c: _pread_into(fd, cbufs[c][:n], off + lo * dt.itemsize, part.path)
                    for c, (off, dt) in columns.items()
                }
                block = Block(acts, tokens=cols.get("tokens"))
                if "position" in cols:
                    block.positions, block.seq_index = cols["position"], cols["seq_id"]
                elif part.seq_len:
                    idx = np.arange(lo, lo + n)
                    block.positions, block.seq_index = idx % part.seq_len, idx // part.seq_len
                yield block
                lo += n
        finally:
            os.close(fd)

    return read


def _pread_into(fd: int, out: np.ndarray, offset: int, path: Path) -> np.ndarray:
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise UsageError(f"{path} is shorter than its header says (truncated file?)")
        done += got
    return out


# -- .safetensors ---------------------------------------------------------------------------------
def _open_safetensors(path: Path, tensor: str | None) -> Part:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise UsageError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 << 20:
            raise UsageError(f"{path} is not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{path} is not a safetensors file (unreadable header)") from None
    base = 8 + n
    if not isinstance(header, dict) or not all(
        isinstance(t, dict) and {"dtype", "shape", "data_offsets"} <= set(t)
        for k, t in header.items()
        if k != "__metadata__"
    ):
        raise UsageError(f"{path} is not a safetensors file (its header lacks dtype/shape/data_offsets entries)")
    header.pop("__metadata__", None)
    floats, token_entry = {}, None
    for name, t in header.items():
        if t["dtype"] in SAFETENSORS_DTYPES and len(t["shape"]) in (2, 3):
            floats[name] = t
        elif name in TOKEN_NAMES and t["dtype"] in SAFETENSORS_INTS:
            token_entry = t
    if tensor is not None:
        if tensor not in floats:
            raise UsageError(f"{path} has no 2-D/3-D float tensor '{tensor}'; it has {sorted(floats) or 'none'}")
        floats = {tensor: floats[tensor]}
    if not floats:
        found = {k: (v["dtype"], v["shape"]) for k, v in header.items()}
        raise UsageError(f"{path} holds no 2-D or 3-D float16/bfloat16/float32/float64 tensor (found {found})")
    lead = {name: tuple(t["shape"][:-1]) for name, t in floats.items()}
    if len(set(lead.values())) > 1:
        raise UsageError(f"{path}: tensors disagree on their row count {lead}; one row per token in every hook")
    shape = next(iter(lead.values()))
    rows = int(np.prod(shape))
    layout, hooks = {}, {}
    for name, t in floats.items():
        raw_dtype, dtype_name = SAFETENSORS_DTYPES[t["dtype"]]
        layout[name] = (base + t["data_offsets"][0], np.dtype(raw_dtype), int(t["shape"][-1]))
        hooks[name] = (int(t["shape"][-1]), dtype_name)
    columns = {}
    if token_entry is not None:
        tshape = tuple(token_entry["shape"])
        # Token ids need their sequences: a (sequences, positions) shape, or 1-D ids with `position` and
        # `seq_id` tensors beside them (what `osae store export` writes).
        explicit = all(
            header.get(c, {}).get("dtype") in SAFETENSORS_INTS and tuple(header[c]["shape"]) == (rows,)
            for c in ("position", "seq_id")
        )
        if int(np.prod(tshape)) != rows or (len(tshape) != 2 and not explicit):
            raise UsageError(
                f"{path}: token ids of shape {tshape} do not fit activations of shape {shape} x width "
                f"(token ids need shape (sequences, positions), or position and seq_id tensors)"
            )
        columns["tokens"] = (base + token_entry["data_offsets"][0], np.dtype(SAFETENSORS_INTS[token_entry["dtype"]]))
        if explicit and len(tshape) != 2:
            for c in ("position", "seq_id"):
                columns[c] = (base + header[c]["data_offsets"][0], np.dtype(SAFETENSORS_INTS[header[c]["dtype"]]))
        else:
            shape = tshape
    # Sequences are known from 3-D activations or from (sequences, positions) token ids.
    part = Part(path, rows, hooks, seq_len=int(shape[1]) if len(shape) == 2 else None, has_tokens="tokens" in columns)
    part._reader = _raw_reader(layout, columns)
    return part


# -- Arrow (saved Hugging Face datasets, SAELens caches) --------------------------------------------
def _open_arrow(path: Path, column: str | None, tokens_column: str | None) -> Part:
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            reader = _arrow_reader(source, path)
            schema = reader.schema
            rows = sum(b.num_rows for b in _iter_batches(reader))
    except pa.ArrowInvalid as exc:
        raise UsageError(f"{path} is not a readable Arrow file ({exc})") from None
    float_cols = {f.name: _list_shape(f.type) for f in schema if _list_shape(f.type) is not None}
    if column is None:
        candidates = [c for c, s in float_cols.items() if s[2] != "int"]
        if len(candidates) != 1:
            raise UsageError(f"{path} has {len(candidates)} float list columns {candidates}; choose one with --column")
        column = candidates[0]
    if column not in float_cols or float_cols[column][2] == "int":
        raise UsageError(f"{path} has no float list column '{column}'; its columns are {schema.names}")
    seq_len, width, dtype = float_cols[column]
    nested = _is_nested(schema.field(column).type)
    if width is None or (nested and seq_len is None):
        # datasets' Array2D is stored as lists of lists: read the sizes off the first row (every block is
        # checked against them when read).
        seq_len, width = _first_row_sizes(path, column, nested)
    tok_col = tokens_column or next((c for c in TOKEN_NAMES if c in schema.names), None)
    if tokens_column and tokens_column not in schema.names:
        raise UsageError(f"{path} has no token column '{tokens_column}'; its columns are {schema.names}")
    if tok_col is not None and seq_len is None:
        raise UsageError(
            f"{path}: token column '{tok_col}' needs sequence rows (an Array2D column of positions x width)"
        )
    per_row = seq_len or 1
    part = Part(path, rows * per_row, {column: (width, dtype)}, seq_len=seq_len, has_tokens=tok_col is not None)
    part._reader = _arrow_blocks(column, tok_col)
    return part


def _is_nested(t) -> bool:
    import pyarrow as pa

    t = t.storage_type if isinstance(t, pa.ExtensionType) else t
    return (
        pa.types.is_list(t.value_type)
        or pa.types.is_fixed_size_list(t.value_type)
        or pa.types.is_large_list(t.value_type)
    )


def _first_row_sizes(path: Path, column: str, nested: bool) -> tuple[int | None, int]:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        for batch in _iter_batches(_arrow_reader(source, path)):
            if batch.num_rows:
                row = batch.column(column)[0].as_py()
                if not row or (nested and not row[0]):
                    break
                return (len(row), len(row[0])) if nested else (None, len(row))
    raise UsageError(f"{path}: column '{column}' has no non-empty first row to read its shape from")


def _arrow_reader(source, path: Path):
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(source)  # what datasets' save_to_disk writes
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source)


def _iter_batches(reader):
    if hasattr(reader, "num_record_batches"):  # the random-access file format
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    else:
        yield from reader


def _list_shape(t) -> tuple[int | None, int | None, str] | None:
    """(positions or None, width or None, dtype) of a list-of-floats (or list of lists) column."""
    import pyarrow as pa

    t = t.storage_type if isinstance(t, pa.ExtensionType) else t

    def inner(x):
        if pa.types.is_fixed_size_list(x):
            return x.list_size, x.value_type
        if pa.types.is_list(x) or pa.types.is_large_list(x):
            return None, x.value_type
        return None

    outer = inner(t)
    if outer is None:
        return None
    size, value = outer
    nested = inner(value)
    if nested is not None:
        width, leaf = nested
        return size, width, _arrow_dtype(leaf)
    if not (pa.types.is_floating(value) or pa.types.is_integer(value)):
        return None
    return None, size, _arrow_dtype(value)


def _arrow_dtype(t) -> str:
    import pyarrow as pa

    if pa.types.is_integer(t):
        return "int"
    return {"halffloat": "float16", "float": "float32", "double": "float64"}.get(str(t), str(t))


def _arrow_blocks(column: str, tok_col: str | None):
    def read(part: Part, start: int, block_rows: int) -> Iterator[Block]:
        import pyarrow as pa

        per_row = part.seq_len or 1
        width = part.hooks[column][0]
        row = 0  # dataset rows (sequences) passed
        consumed_bytes = 0
        skip_rows = 0
        while True:
            # Re-open the map now and then: pages of a memory map stay resident (and counted) while it is open.
            with pa.memory_map(str(part.path)) as source:
                reader = _arrow_reader(source, part.path)
                batches = _iter_batches(reader)
                skip_rows = row
                reopen = False
                for batch in batches:
                    if skip_rows >= batch.num_rows:
                        skip_rows -= batch.num_rows
                        continue
                    batch = batch.slice(skip_rows)
                    skip_rows = 0
                    step = max(1, block_rows // per_row)
                    for s in range(0, batch.num_rows, step):
                        piece = batch.slice(s, step)
                        first = (row + s) * per_row
                        if first + piece.num_rows * per_row <= start:
                            continue
                        flat = _flat_values(piece.column(column))
                        if flat.size != piece.num_rows * per_row * width:
                            raise UsageError(
                                f"{part.path}: rows of '{column}' differ in shape (expected "
                                f"{per_row} x {width} values per row)"
                            )
                        acts = flat.reshape(-1, width)
                        tokens = _flat_values(piece.column(tok_col)) if tok_col else None
                        cut = max(0, start - first)
                        block = Block({column: acts[cut:]})
                        if tok_col:
                            block.tokens = tokens[cut:]
                        if part.seq_len:
                            idx = np.arange(first + cut, first + len(acts))
                            block.positions, block.seq_index = idx % per_row, idx // per_row
                        yield block
                        consumed_bytes += acts.nbytes
                    row += batch.num_rows
                    if consumed_bytes >= ARROW_REOPEN_BYTES:
                        consumed_bytes = 0
                        reopen = True
                        break
                if not reopen:
                    return

    return read


def _flat_values(col) -> np.ndarray:
    """The leaf values of a (nested) list column chunk as one numpy array (a copy)."""
    import pyarrow as pa

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.flatten()
    return np.array(arr.to_numpy(zero_copy_only=False))
