"""SAEs trained by other libraries, read directly: `load_any(path)` returns an osae `SAE` and a config dict
shaped like `osae.train.checkpoint.load_frozen`'s (architecture, d_in, d_sae, hook, hook_info,
normalization, step, seed, ...), so every metric reads them unchanged. The format is detected from the files
(osae.foreign.detect) unless `format` says it; one module per library reads its layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from osae.foreign.detect import FORMATS, detect_format, is_checkpoint
from osae.train.architectures import SAE


def load_any(path, format: str | None = None, device: str | torch.device = "cpu", store=None) -> tuple[SAE, dict]:
    """(sae in eval mode, config dict) from a checkpoint directory of any supported library.

    `store` (an ActivationStore) is used only when the checkpoint's activation scale must be estimated
    (SAELens' expected_average_only_in without a saved factor)."""
    path = Path(path)
    fmt = detect_format(path, format)
    if fmt == "osae":
        from osae.foreign.osae_format import load_osae

        return load_osae(path, device)
    if fmt == "saelens":
        from osae.foreign.saelens import load_saelens

        return load_saelens(path, device, store)
    if fmt == "sparsify":
        from osae.foreign.sparsify import load_sparsify

        return load_sparsify(path, device)
    from osae.foreign.dictionary_learning import load_dictionary_learning

    return load_dictionary_learning(path, device)


__all__ = ["FORMATS", "detect_format", "is_checkpoint", "load_any"]
