"""The peer libraries' own code against osae's readers and writers (run in .venv-peers, which
benchmarks/peer_setup.sh builds with sae-lens and eai-sparsify beside osae, torch held at 2.13.0).

Two directions, each compared on the same rows:
- osae trains small SAEs, `osae export` writes them, and SAELens' `SAE.load_from_disk` / sparsify's
  `SparseCoder.load_from_disk` load them: their reconstructions must equal osae's.
- SAELens and sparsify build SAEs, give them non-trivial weights (biases, thresholds, decoder norms other than
  1), save them with their own `save_model` / `save_to_disk`, and `osae.load_sae` reads them: its codes and
  reconstructions must equal the library's.

CI cannot run this (the peers are not dependencies); the unit tests check the same layouts from the
libraries' documented formulas. Prints one table; exits 1 if any row differs.

    .venv-peers/bin/python benchmarks/peer_formats.py [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
import tempfile
from pathlib import Path

import torch

TOLERANCE = 1e-4  # relative to the rows' RMS: float32 matmuls summed in different orders


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """|got - want| / |want|; infinite for an all-zero reference, which would prove nothing."""
    norm = float(want.norm())
    return float((got - want).norm()) / norm if norm > 0 else float("inf")


def exports_read_by_the_peers(work: Path, rows: int = 512) -> list[tuple]:
    """osae-trained SAEs, exported, then loaded and run by SAELens and sparsify."""
    from sae_lens import SAE
    from sparsify import SparseCoder

    import osae
    from osae.synthetic import ToyConfig, write_toy_store
    from osae.train.checkpoint import load_frozen
    from osae.train.config import SAESpec, TrainConfig
    from osae.train.export import export
    from osae.train.fit import fit

    store = work / "toy.zarr"
    write_toy_store(store, ToyConfig(d=32, n_atoms=64, m=4, n=16000, n_eval=2000))
    specs = [
        SAESpec("topk", 0, {"d_sae": 64, "k": 4}),
        SAESpec("osae", 0, {"d_sae": 64, "k": 4}),
        SAESpec("batchtopk", 0, {"d_sae": 64, "k": 4, "threshold_start": 4}),
        SAESpec("matryoshka", 0, {"d_sae": 64, "k": 4}),
        SAESpec("relu", 0, {"d_sae": 64}),
    ]
    run = work / "run"
    fit(
        TrainConfig(
            store=str(store),
            out=str(run),
            saes=specs,
            tokens=256 * 40,
            batch_size=256,
            lr_warmup_steps=4,
            buffer_bytes=2**20,
        ),
        progress=False,
    )
    x = torch.from_numpy(osae.open_store(store).read_acts("toy", 0, rows)).float()
    results = []
    for spec in specs:
        ckpt = run / spec.name
        ours = osae.load_sae(ckpt).forward(x)
        out = work / "saelens" / spec.name
        export(ckpt, out, "saelens")
        sae = SAE.load_from_disk(str(out)).eval()
        with torch.no_grad():
            theirs = sae.decode(sae.encode(x))
        results.append(("osae export -> SAELens load", spec.arch, type(sae).__name__, relative_error(theirs, ours)))
        if load_frozen(ckpt)[0].cfg.saelens_architecture() == "topk":  # sparsify has per-token TopK only
            out = work / "sparsify" / "layers.0"
            export(ckpt, out, "sparsify")
            coder = SparseCoder.load_from_disk(out)
            with torch.no_grad():
                enc = coder.encode(x)
                theirs = coder.decode(enc.top_acts, enc.top_indices)
            results.append(("osae export -> sparsify load", spec.arch, "SparseCoder", relative_error(theirs, ours)))
    return results


def code_label(z: torch.Tensor) -> str:
    """'code' with the reference's mean L0, so a row shows that the compared codes were not trivially sparse."""
    return f"code (L0 {float((z != 0).sum(-1).float().mean()):.1f})"


def _perturb_(module: torch.nn.Module, seed: int) -> None:
    """Every parameter to random values (biases and decoder norms away from their initial 0 and 1), so a field
    that a reader ignores shows up as a difference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "b" in name.split(".")[-1][:2] else 1.0))


def peers_read_by_osae(work: Path, d: int = 32, f: int = 64, rows: int = 512) -> list[tuple]:
    """SAEs built and saved by SAELens and sparsify, loaded by osae.load_sae."""
    import sae_lens
    from sparsify import SaeConfig, SparseCoder

    import osae

    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d, generator=g) * 2 + 0.5
    results = []
    saelens = [
        ("standard", sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
        ("standard, no input bias", sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {"apply_b_dec_to_input": False}),
        ("topk", sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 6}),
        (
            "topk, decoder-norm rescaling",
            sae_lens.TopKSAE,
            sae_lens.TopKSAEConfig,
            {"k": 6, "rescale_acts_by_decoder_norm": True},
        ),
        ("jumprelu", sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {}),
    ]
    for i, (label, cls, config_cls, extra) in enumerate(saelens):
        sae = cls(config_cls(d_in=d, d_sae=f, **extra))
        _perturb_(sae, i)
        if hasattr(sae, "threshold"):
            with torch.no_grad():
                sae.threshold.copy_(torch.rand(f, generator=g) * 12)  # pre-activations have a scale of about 10
        path = work / "peer-saelens" / str(i)
        sae.save_model(str(path))
        ours = osae.load_sae(path)
        with torch.no_grad():
            z, recon = sae.encode(x), sae.decode(sae.encode(x))
        results.append(("SAELens save -> osae load", label, code_label(z), relative_error(ours.encode(x), z)))
        results.append(("SAELens save -> osae load", label, "reconstruction", relative_error(ours.forward(x), recon)))
    # Training checkpoints of BatchTopK-style SAEs: osae must read them as SAELens' own inference export does
    # (a JumpReLU with the learnt threshold for every latent, decoder norms folded).
    training = [
        ("batchtopk (training checkpoint)", sae_lens.BatchTopKTrainingSAE, sae_lens.BatchTopKTrainingSAEConfig, {}),
        (
            "matryoshka_batchtopk (training checkpoint)",
            sae_lens.MatryoshkaBatchTopKTrainingSAE,
            sae_lens.MatryoshkaBatchTopKTrainingSAEConfig,
            {"matryoshka_widths": [16, 32, f]},
        ),
    ]
    for i, (label, cls, config_cls, extra) in enumerate(training):
        sae = cls(config_cls(d_in=d, d_sae=f, k=6, **extra))
        _perturb_(sae, 20 + i)
        with torch.no_grad():
            sae.topk_threshold.fill_(8.0)
        path, inference = work / "peer-saelens-training" / str(i), work / "peer-saelens-inference" / str(i)
        sae.save_model(str(path))
        sae.save_inference_model(str(inference))
        reference = sae_lens.SAE.load_from_disk(str(inference)).eval()
        ours = osae.load_sae(path)
        with torch.no_grad():
            z = reference.encode(x)
            recon = reference.decode(z)
        results.append(("SAELens save -> osae load", label, code_label(z), relative_error(ours.encode(x), z)))
        results.append(("SAELens save -> osae load", label, "reconstruction", relative_error(ours.forward(x), recon)))
    results += dictionary_learning_read_by_osae(work, x, f)
    coder = SparseCoder(d, SaeConfig(num_latents=f, k=6))
    _perturb_(coder, 9)
    path = work / "peer-sparsify" / "layers.3"
    coder.save_to_disk(path)
    ours = osae.load_sae(path)
    with torch.no_grad():
        enc = coder.encode(x)
        recon = coder.decode(enc.top_acts, enc.top_indices)
        z = torch.zeros(rows, f).scatter(1, enc.top_indices, enc.top_acts)
    results.append(("sparsify save -> osae load", "topk", code_label(z), relative_error(ours.encode(x), z)))
    results.append(("sparsify save -> osae load", "topk", "reconstruction", relative_error(ours.forward(x), recon)))
    return results


def dictionary_learning_read_by_osae(work: Path, x: torch.Tensor, f: int) -> list[tuple]:
    """dictionary_learning's classes, saved as its training loop does (`ae.pt` state dict + config.json with
    the trainer's config), loaded by osae.load_sae and compared with the class's own encode/decode."""
    import json

    from dictionary_learning.dictionary import AutoEncoder, AutoEncoderNew, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    import osae

    d, k = x.shape[1], 6
    classes = [
        (AutoEncoder, {}),
        (AutoEncoderNew, {}),
        (AutoEncoderTopK, {"k": k}),
        (BatchTopKSAE, {"k": k}),
        (MatryoshkaBatchTopKSAE, {"k": k, "group_sizes": [16, 16, f - 32]}),
        (JumpReluAutoEncoder, {}),
    ]
    results = []
    for i, (cls, extra) in enumerate(classes):
        ae = cls(d, f, **extra)
        _perturb_(ae, 40 + i)
        with torch.no_grad():
            if isinstance(ae.threshold if hasattr(ae, "threshold") else None, torch.Tensor):
                ae.threshold.copy_(torch.rand(ae.threshold.shape, generator=torch.Generator().manual_seed(i)) * 12)
        path = work / "peer-dictionary-learning" / cls.__name__
        path.mkdir(parents=True, exist_ok=True)
        torch.save(ae.state_dict(), path / "ae.pt")
        trainer = {"dict_class": cls.__name__, "activation_dim": d, "dict_size": f, "layer": 3, "lm_name": "x", **extra}
        (path / "config.json").write_text(json.dumps({"trainer": trainer}))
        ours = osae.load_sae(path)
        with torch.no_grad():
            z = ae.encode(x)
            recon = ae.decode(z)
        results.append(
            ("dictionary_learning save -> osae load", cls.__name__, code_label(z), relative_error(ours.encode(x), z))
        )
        results.append(
            (
                "dictionary_learning save -> osae load",
                cls.__name__,
                "reconstruction",
                relative_error(ours.forward(x), recon),
            )
        )
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="keep the checkpoints here (default: a temporary directory)")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = exports_read_by_the_peers(work) + peers_read_by_osae(work)
    versions = ", ".join(
        f"{p} {md.version(p)}" for p in ("sae-lens", "eai-sparsify", "dictionary-learning", "osae", "torch")
    )
    print(f"# peer formats ({versions})\n")
    print("| direction | SAE | compared | relative error | |")
    print("|---|---|---|---|---|")
    failed = 0
    for direction, what, compared, err in rows:
        ok = err <= TOLERANCE
        failed += not ok
        print(f"| {direction} | {what} | {compared} | {err:.1e} | {'equal' if ok else 'DIFFERENT'} |")
    print(f"\n{len(rows) - failed} of {len(rows)} equal within {TOLERANCE:g} of the reference's norm")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
