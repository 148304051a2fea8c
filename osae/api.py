"""The documented Python API (docs/python.md): load an SAE of any supported library and use it on raw
activations, open a store, evaluate checkpoints as `osae evaluate --json` does.

`load_sae` returns a `LoadedSAE`: the checkpoint's SAE with the activation normalisation it was trained with
(the `normalization` its config records, osae.store.Normalizer) applied on the way in and undone on the way
out, so `encode` reads rows in the store's units and `decode` returns them. Codes stay in the units the SAE
was trained in, as SAELens' own `encode` gives them. Shapes: D = d_in, F = d_sae.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from osae.errors import UsageError
from osae.evaluate.batches import checkpoint_normalizer
from osae.store import ActivationStore, Normalizer
from osae.train.architectures import SAE
from osae.train.architectures.codes import Code, DenseCode


class LoadedSAE(nn.Module):
    """A frozen SAE that reads and writes activations in the store's units.

    `encode(x)` (..., D) -> (..., F) dense activations; `encode_sparse(x)` the `Code` of x.reshape(-1, D)
    (sparse for TopK-style SAEs); `decode(z)` takes either back to (..., D); `forward(x)` = decode(encode(x)).
    Inputs of any float dtype and device are converted to the SAE's; results are on the SAE's device. The
    weights do not require grad (gradients with respect to the inputs still flow).
    """

    def __init__(self, sae: SAE, config: dict):
        super().__init__()
        self.sae = sae.requires_grad_(False)
        self.config = config
        self.normalizer: Normalizer = checkpoint_normalizer(config)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def architecture(self) -> str:
        return self.config["architecture"]

    @property
    def hook(self) -> str | None:
        """The store hook the SAE was trained on (None when its library did not record it)."""
        return self.config.get("hook")

    def extra_repr(self) -> str:
        fmt, norm = self.config.get("format", "osae"), self.normalizer.kind
        return f"{self.architecture}, format={fmt}, d_in={self.d_in}, d_sae={self.d_sae}, normalization={norm}"

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) in store units as (N, D) in the SAE's units, dtype and device."""
        if not torch.is_tensor(x):
            raise UsageError(f"pass activations as a torch tensor of shape (..., {self.d_in}); got {type(x).__name__}")
        if x.ndim == 0 or x.shape[-1] != self.d_in:
            raise UsageError(f"activations of shape {tuple(x.shape)} do not end in d_in={self.d_in}")
        rows, w = x.reshape(-1, self.d_in), self.sae.W_dec
        return self.normalizer.into(rows, torch.empty(rows.shape, dtype=w.dtype, device=w.device))

    def encode_sparse(self, x: torch.Tensor) -> Code:
        """The code of the tokens x.reshape(-1, D): an osae.train.architectures.codes.Code (`.dense(F)`, `.l0()`)."""
        return self.sae.encode(self._rows(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations (..., F) of rows x (..., D) in store units."""
        return self.encode_sparse(x).dense(self.d_sae).reshape(*x.shape[:-1], self.d_sae)

    def decode(self, z: torch.Tensor | Code, upto: int | None = None) -> torch.Tensor:
        """Reconstructions in store units from dense activations (..., F) -> (..., D), or from a Code ->
        (B, D). `upto` keeps only latents of index < upto (a prefix of an ordered dictionary)."""
        if torch.is_tensor(z):
            if z.ndim == 0 or z.shape[-1] != self.d_sae:
                raise UsageError(f"codes of shape {tuple(z.shape)} do not end in d_sae={self.d_sae}")
            code, lead = DenseCode(z.reshape(-1, self.d_sae).to(self.sae.W_dec)), z.shape[:-1]
        else:
            code, lead = z, (len(z),)
        if upto is not None and not 0 <= upto <= self.d_sae:
            raise UsageError(f"upto must be in [0, d_sae={self.d_sae}]; got {upto}")
        return self.normalizer.inverse(self.sae.decode(code, upto=upto)).reshape(*lead, self.d_in)

    def forward(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Reconstructions (..., D) of x (..., D), both in store units, through the SAE's own (sparse) code."""
        return self.decode(self.encode_sparse(x), upto=upto).reshape(x.shape)


def open_store(url: str | os.PathLike) -> ActivationStore:
    """The store at `url`: a local path, file://, http(s)://, s3:// or any fsspec URL (S3 endpoints from
    AWS_ENDPOINT_URL, other options from OSAE_STORAGE_OPTIONS as JSON). Read-only; committed rows only."""
    return ActivationStore(url)


def _as_store(store) -> ActivationStore | None:
    return store if store is None or isinstance(store, ActivationStore) else open_store(store)


def load_sae(
    path: str | os.PathLike,
    format: str | None = None,
    device: str | torch.device = "cpu",
    store: ActivationStore | str | os.PathLike | None = None,
) -> LoadedSAE:
    """A checkpoint directory of osae, SAELens, sparsify or dictionary_learning (detected from its files
    unless `format` names one) as a LoadedSAE on `device`. `store` (a store or its URL) is read only when
    the activation scale must be estimated (SAELens' expected_average_only_in without a saved factor)."""
    from osae.foreign import load_any

    sae, config = load_any(path, format=format, device=device, store=_as_store(store))
    return LoadedSAE(sae, config)


def evaluate_checkpoints(
    checkpoints: str | os.PathLike | Iterable[str | os.PathLike],
    store: ActivationStore | str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    **options,
) -> dict:
    """`osae evaluate CHECKPOINTS --store STORE --json` from Python: the same metrics, returned as the JSON
    the CLI prints, parsed (so latent counts as keys are strings, as there). `out` also writes the report
    directory (`--out`). `options` are osae.evaluate.run.evaluate's: use_model, require_model, model,
    max_tokens, lm_tokens, z_tokens, z_max_latents, progressive_ce, device (default cpu), progress, pairs,
    format."""
    from osae.evaluate.run import _json_default, evaluate, public, write_outputs

    accepted = [n for n in inspect.signature(evaluate).parameters if n not in ("paths", "store_url")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UsageError(f"evaluate_checkpoints has no option {', '.join(unknown)}; it takes {', '.join(accepted)}")
    single = isinstance(checkpoints, (str, os.PathLike))
    paths = [os.fspath(p) for p in ([checkpoints] if single else checkpoints)]
    if isinstance(store, ActivationStore):  # evaluate opens its own: pass where this one is
        store = store.loc.path if store.loc.is_local else store.loc.url
    url = os.fspath(store)
    result = evaluate(paths, url, **options)
    if out is not None:
        write_outputs(result, Path(out))
    # Through JSON exactly as the CLI writes it, so both give equal dicts (numpy scalars, int keys, tuples).
    return json.loads(json.dumps(public(result), default=_json_default))


__all__ = ["LoadedSAE", "evaluate_checkpoints", "load_sae", "open_store"]
