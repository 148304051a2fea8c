"""The Gaussian toy of the OSAE paper (methods.md 5), under the paper's protocol and with post-hoc controls.

- Every top-m model gets the k warm-up from K down to m (the paper gives it to OSAE; a fair comparison
  gives it to all), over the first tenth of the epochs.
- Each family's learning rate is chosen from a grid by the lowest validation MSE of seed 0 (the paper:
  "hyperparameters per method by the best validation reconstruction"); every number reported is then
  measured on a test set of fresh samples of the same atoms (seed+3), never on the rows that chose it.
- OSAE sweeps units in epochs: after a burn-in of twice the warm-up, one more unit is frozen per epoch.
- TopK and BatchTopK re-sorted after training by firing frequency and by E[z^2] (`osae permute`) are the
  controls for every order metric: in this toy the true order is the frequency order, so sorting a trained
  unordered SAE is the strongest baseline an ordering method must beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from osae.evaluate.report import matching_scatter
from osae.evaluate.run import evaluate, public
from osae.synthetic import ToyConfig, write_toy_store
from osae.train.config import SAESpec, TrainConfig

from .common import log, permuted, train

N_TRAIN, BATCH = 100_000, 1024
EPOCH = N_TRAIN // BATCH  # steps per epoch
K, M = 100, 5
NAMES = {
    "topk": "Vanilla (top-m)",
    "matryoshka": "Fixed MSAE",
    "matryoshka-random": "Random MSAE",
    "osae": "OSAE",
    "batchtopk": "BatchTopK",
    "relu": "ReLU-L1",
    "hybridorder": "HybridOrder",
}
SORTED = {f"{a}-{by}": f"{NAMES[a]} sorted by {what}" for a in ("topk", "batchtopk") for by, what in
          (("freq", "frequency"), ("ea2", "E[z^2]"))}  # fmt: skip


@dataclass
class ToyPlan:
    epochs: int
    seeds: int
    lrs: tuple[float, ...]

    @property
    def warmup_epochs(self) -> int:
        return max(1, round(0.1 * self.epochs))

    @property
    def sweep_start_epoch(self) -> int:
        return 3 * self.warmup_epochs  # the warm-up, then a burn-in twice as long

    @property
    def swept_units(self) -> int:
        return max(0, min(K - 1, self.epochs - self.sweep_start_epoch))


def specs(plan: ToyPlan, seed: int, lrs: dict[str, float]) -> list[SAESpec]:
    topm = {"d_sae": K, "k": M, "aux_k_coef": 0.0, "k_init": K, "k_warmup_steps": plan.warmup_epochs * EPOCH}
    configs = {
        "topk": topm,
        "batchtopk": topm,
        "matryoshka": {**topm, "widths": [6, 12, 25, 50, 100], "selection": "token"},
        "matryoshka-random": {**topm, "groups": 5, "selection": "token"},
        "osae": {
            **topm,
            **({"sweep_start": plan.sweep_start_epoch * EPOCH, "sweep_every": EPOCH} if plan.swept_units else {}),
        },  # fmt: skip
        "relu": {"d_sae": K, "l1_coef": 0.1, "l1_warmup_steps": 2 * EPOCH},
        "hybridorder": {"d_sae": K, "l1_coef": 0.1, "reorder_start": 2 * EPOCH, "reorder_every": EPOCH},
    }
    return [SAESpec(arch, seed, config, lr=lrs[arch]) for arch, config in configs.items()]


def _config(store: Path, out: Path, saes: list[SAESpec], epochs: int) -> TrainConfig:
    return TrainConfig(
        store=str(store),
        out=str(out),
        saes=saes,
        tokens=epochs * EPOCH * BATCH,
        batch_size=BATCH,
        normalization="none",  # the paper's toy has no normalisation
        log_every=EPOCH,
    )


def run_toy(out: Path, plan: ToyPlan) -> dict:
    validation, test = out / "toy.zarr", out / "toy-test.zarr"
    for path, held_out in ((validation, "validation"), (test, "test")):
        if not (path / "zarr.json").exists():
            write_toy_store(path, ToyConfig(held_out=held_out))
    # 1. the learning-rate grid on seed 0, scored on the validation rows
    grid: dict[str, dict[str, float]] = {arch: {} for arch in NAMES}
    for lr in plan.lrs:
        run = out / f"toy-lr{lr:g}"
        train(_config(validation, run, specs(plan, 0, dict.fromkeys(NAMES, lr)), plan.epochs))
        scores = public(evaluate([str(run)], str(validation), use_model=False, max_tokens=10_000, progress=False))
        for name, m in scores["saes"].items():
            grid[name.rsplit("-K", 1)[0]][f"{lr:g}"] = m["mse"]
    chosen = {arch: float(min(v, key=v.get)) for arch, v in grid.items()}
    log.info("toy learning rates by validation MSE: %s", chosen)
    # 2. the other seeds at each family's chosen rate
    seeds_run = out / "toy-seeds"
    if plan.seeds > 1:
        saes = [s for seed in range(1, plan.seeds) for s in specs(plan, seed, chosen)]
        train(_config(validation, seeds_run, saes, plan.epochs))
    # 3. every family's checkpoints, the post-hoc sorted controls, scored on the test rows
    families: dict[str, list[Path]] = {}
    for spec in [s for seed in range(plan.seeds) for s in specs(plan, seed, chosen)]:
        run = out / f"toy-lr{chosen[spec.arch]:g}" if spec.seed == 0 else seeds_run
        families.setdefault(spec.arch, []).append(run / spec.name)
    for arch in ("topk", "batchtopk"):
        for by in ("freq", "ea2"):
            families[f"{arch}-{by}"] = [permuted(c, validation, by, N_TRAIN) for c in families[arch]]
    derived = {"swept_units": plan.swept_units, "warmup_epochs": plan.warmup_epochs}
    derived["sweep_start_epoch"] = plan.sweep_start_epoch
    result = {"plan": plan.__dict__ | derived, "grid": grid, "chosen_lr": chosen, "families": {}}
    scatter = {}
    for label, ckpts in families.items():
        r = evaluate([str(c) for c in ckpts], str(test), use_model=False, max_tokens=10_000, z_tokens=10_000)
        result["families"][label] = {"saes": public(r)["saes"], "pairs": public(r)["pairs"]}
        if label in ("osae", "topk", "topk-freq") and len(ckpts) > 1:
            scatter[{**NAMES, **SORTED}[label]] = next(iter(r["_figures"]["matchings"].values()))
    if scatter:
        matching_scatter(scatter, out)
        (out / "matching.png").replace(out / "toy_matching.png")
    return result


def family_means(toy: dict) -> dict[str, dict[str, float]]:
    """Per family: the mean over seeds of every SAE metric and over pairs of every pair metric."""
    means = {}
    for label, fam in toy["families"].items():
        saes, pairs = list(fam["saes"].values()), fam["pairs"]
        m = {k: float(np.mean([s[k] for s in saes])) for k in ("stab_gt", "ord_gt", "mse", "fvu", "l0")}
        for k in ("stab", "ord", "stab_z", "ord_z"):
            m[f"pair_{k}"] = float(np.mean([p[k] for p in pairs])) if pairs else float("nan")
        means[label] = m
    return means
