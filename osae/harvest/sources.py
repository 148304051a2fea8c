"""Where harvest text comes from: a Hugging Face dataset (streamed), local files, or the running Python's
standard library (`python-stdlib`, text every machine has, which also trained the embedded model).

Every source yields documents as strings, in a fixed order, and describes itself for the store's provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from osae.errors import MissingInputError, UsageError
from osae.store import file_sha256

log = logging.getLogger(__name__)

STDLIB = "python-stdlib"
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")


def stdlib_files(include_tests: bool = True) -> list[Path]:
    """The standard library's .py files in a fixed (sorted) order, without site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    if not include_tests:
        files = [p for p in files if not ({"test", "tests", "idle_test"} & set(p.relative_to(root).parts))]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@dataclass
class TextSource:
    """A named sequence of documents. `describe()` goes into the store's provenance."""

    kind: str
    name: str
    text_column: str = "text"
    split: str = "train"
    config: str | None = None
    revision: str | None = None
    files: list[Path] = field(default_factory=list)

    def documents(self) -> Iterator[str]:
        if self.kind in ("stdlib", "files"):
            for path in self.files:
                yield from _read_local(path, self.text_column)
        else:
            yield from _read_hub(self)

    def describe(self) -> dict:
        out = {"kind": self.kind, "id": self.name, "text_column": self.text_column, "split": self.split}
        if self.kind == "stdlib":
            out["python"] = sys.version.split()[0]
            out["n_files"] = len(self.files)
            listing = "\n".join(p.name + " " + str(p.stat().st_size) for p in self.files)
            out["listing_sha256"] = hashlib.sha256(listing.encode()).hexdigest()
        elif self.kind == "files":
            out["files"] = [{"path": str(p), "sha256": file_sha256(p)} for p in self.files]
        else:
            out.update(config=self.config, revision=self.revision)
        return out


def resolve_source(
    dataset: str,
    *,
    text_column: str = "text",
    split: str = "train",
    config: str | None = None,
    revision: str | None = None,
) -> TextSource:
    """`python-stdlib`, a local file or directory (.txt/.jsonl/.parquet), or a Hugging Face dataset id."""
    if dataset == STDLIB:
        return TextSource("stdlib", STDLIB, files=stdlib_files())
    path = Path(dataset).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise UsageError(f"{dataset} holds no {'/'.join(LOCAL_SUFFIXES)} files")
        bad = [p for p in files if p.suffix not in LOCAL_SUFFIXES]
        if bad:
            raise UsageError(f"{bad[0]} is not a .txt, .jsonl or .parquet file")
        return TextSource("files", str(path), text_column=text_column, files=files)
    if dataset.startswith((".", "/", "~")) or os.sep in dataset and not _looks_like_hub_id(dataset):
        raise MissingInputError(f"no dataset at {dataset}: the path does not exist")
    return TextSource("hub", dataset, text_column=text_column, split=split, config=config, revision=revision)


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith(("/", "."))


def _read_local(path: Path, column: str) -> Iterator[str]:
    if path.suffix == ".txt" or path.suffix == ".py":
        yield path.read_text(encoding="utf-8", errors="replace")
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                row = json.loads(line)
                if column not in row:
                    raise UsageError(
                        f"{path} line {i + 1} has no '{column}' field (it has {sorted(row)}); pass --text-column"
                    )
                yield str(row[column])
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if column not in pf.schema_arrow.names:
            raise UsageError(f"{path} has no column '{column}' (it has {pf.schema_arrow.names}); pass --text-column")
        for batch in pf.iter_batches(columns=[column], batch_size=1024):
            yield from (str(t) for t in batch.column(0).to_pylist() if t is not None)


def _read_hub(src: TextSource) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise UsageError("Hugging Face datasets need the `datasets` package: pip install datasets") from None
    from osae.harvest.models import go_offline, hub_offline, hub_reachable

    offline = hub_offline()
    if not offline and not hub_reachable():
        go_offline()  # cached datasets still load; others fail now instead of after retries
        datasets.config.HF_HUB_OFFLINE = True  # read by datasets at import, before go_offline set the variable
        offline = True
    if offline:
        # Only a cached copy can load; datasets would announce that on stderr, twice, around our one line.
        datasets.utils.logging.set_verbosity_error()
        log.info("the hub is offline: looking for '%s' in the datasets cache", src.name)
    try:
        ds = datasets.load_dataset(src.name, src.config, split=src.split, streaming=True, revision=src.revision)
    except Exception as exc:  # the hub client raises many types; all mean "cannot get this dataset"
        raise UsageError(
            f"cannot load dataset '{src.name}' from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:150]}); "
            f"offline, use --dataset python-stdlib or local .txt/.jsonl/.parquet files"
        ) from None
    first = True
    for row in ds:
        if first and src.text_column not in row:
            raise UsageError(
                f"dataset '{src.name}' has no column '{src.text_column}' (it has {sorted(row)}); pass --text-column"
            )
        first = False
        yield str(row[src.text_column])
