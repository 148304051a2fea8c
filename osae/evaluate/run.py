"""`evaluate`: every metric of frozen checkpoints on a store's held-out split, and consistency between them.

Checkpoints of any library osae reads (osae.foreign: osae, SAELens, sparsify, dictionary_learning). Per SAE:
reconstruction (osae.evaluate.reconstruction), model-level CE/KL (osae.evaluate.lm_metrics) when the store's
model loads, power laws, and Stab/Ord against the ground truth of synthetic stores. Across SAEs: Stab, Ord,
their prefix curves and Stab_Z/Ord_Z for every pair of seeds of one configuration (`pairs="seeds"`: the saved
configurations are equal but for the seed) or every pair of the same width and hook (`pairs="all"`), and the
stitching fractions between two sizes of one architecture. A metric that cannot be computed is null with the
reason in `notes`.
"""

from __future__ import annotations

import json
import logging
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from osae.constants import MIN_EVAL_ROWS
from osae.errors import CheckpointError, UsageError
from osae.evaluate.batches import checkpoint_normalizer, encode_rows
from osae.evaluate.consistency import CodeCorrelation, match, prefix_curves
from osae.evaluate.reconstruction import (
    default_granularities,
    power_law,
    reconstruction_metrics,
    rsa,
)
from osae.evaluate.stitching import stitching
from osae.foreign import detect_format, is_checkpoint, load_any
from osae.foreign.detect import layout_summary
from osae.progress import tracked
from osae.store import ActivationStore, iter_rows, split_intervals, store_fingerprint

log = logging.getLogger(__name__)


def find_checkpoints(paths: list[str], format: str | None = None) -> list[Path]:
    """Checkpoint directories among `paths` (a run directory contributes all of its SAEs), of any format
    (`format`: of that one only)."""
    found = []
    for p in map(Path, paths):
        if is_checkpoint(p, format):
            found.append(p)
        elif p.is_dir() and any(is_checkpoint(c, format) for c in p.iterdir()):
            found.extend(sorted(c for c in p.iterdir() if is_checkpoint(c, format)))
        elif p.is_dir():
            if format is not None:
                detect_format(p, format)  # names the files that --format needs and the directory lacks
            raise CheckpointError(
                f"{p} is neither a checkpoint nor a run directory holding checkpoints ({layout_summary(p)})"
            )
        else:
            raise CheckpointError(f"{p} is neither a checkpoint directory nor a run directory holding checkpoints")
    return found


def display_names(paths: list[Path]) -> dict[Path, str]:
    """A short unique name per checkpoint: its directory name, with parents added while two names collide
    (sparsify's `seed0` directories, SAELens' `final_<n>` ones, the same name in two runs)."""
    depth = {p: 1 for p in paths}
    while True:
        names = {p: "/".join(p.resolve().parts[-depth[p] :]) for p in paths}
        clash = [p for p in paths if list(names.values()).count(names[p]) > 1 and depth[p] < len(p.resolve().parts)]
        if not clash:
            return names
        for p in clash:
            depth[p] += 1


def require_matching_store(path, sae, cfg: dict, store: ActivationStore) -> None:
    """Refuse a checkpoint whose hook or width the store does not have."""
    hook = cfg.get("hook")
    if hook not in store.hooks:
        raise CheckpointError(
            f"{path} was trained on hook '{hook}', which {store.loc.display} does not hold "
            f"(it has {sorted(store.hooks)}); pass the matching store"
        )
    if store.d_model(hook) != sae.cfg.d_in:
        raise CheckpointError(
            f"store at {store.loc.display} has d_in={store.d_model(hook)} but {path} expects "
            f"{sae.cfg.d_in}; pass the matching store or retrain"
        )


# Keys of a saved configuration that say where, when or under which name a checkpoint was written, not what
# was trained: seed families ignore them (and the seed, which is what distinguishes the family's members).
BOOKKEEPING = {
    "format_version", "osae_version", "run", "step", "tokens_seen", "final", "weights_sha256", "store", "source",
    "notes", "lr_scheduler", "wandb_name", "wandb_project", "wandb_entity", "wandb_id", "run_name", "save_dir",
    "checkpoint_path", "output_path", "device", "sae_lens_version", "sae_lens_training_version", "neuronpedia_id",
    "log_to_wandb", "from", "permutation",
}  # fmt: skip
SEED_KEYS = {"seed", "init_seeds"}


def seed_family(cfg: dict) -> str:
    """The configuration a checkpoint belongs to, from its saved config (any library's): everything but the
    seed and the bookkeeping keys, at any depth, as canonical JSON. Members of one family are seed pairs."""

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in sorted(v.items()) if k not in BOOKKEEPING and k not in SEED_KEYS}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return json.dumps(strip(cfg), sort_keys=True, default=str)


def pair_names(loaded: dict, mode: str, families: dict[str, str]) -> list[tuple[str, str]]:
    """The pairs to compare: seeds of one family (`families`: name -> seed_family), or (`all`) every pair of
    the same width d_in and hook."""
    names = sorted(loaded)
    if mode == "all":
        return [
            (a, b)
            for a, b in combinations(names, 2)
            if loaded[a][1]["hook"] == loaded[b][1]["hook"] and loaded[a][0].cfg.d_in == loaded[b][0].cfg.d_in
        ]
    return [(a, b) for a, b in combinations(names, 2) if families[a] == families[b]]


def _note_trained_elsewhere(name: str, cfg: dict, store: ActivationStore, notes: dict) -> None:
    """Say when a checkpoint was not trained on `store` (another store, or another library's data)."""
    theirs = cfg.get("store_fingerprint")
    if cfg.get("format", "osae") != "osae":
        notes[f"{name}.store"] = (
            f"{name} was trained by {cfg['format']} on data osae cannot identify; evaluated on {store.loc.display}"
        )
    elif theirs and theirs != store_fingerprint(store):
        notes[f"{name}.store"] = (
            f"{name} was trained on {cfg.get('store', 'another store')}, not on {store.loc.display}; "
            f"evaluated on {store.loc.display} (same hook and width)"
        )


def _note_small_eval_split(store: ActivationStore, max_tokens: int, notes: dict) -> None:
    """Warn (and note in the report) when the held-out split is smaller than the metrics ask for and than
    MIN_EVAL_ROWS: FVU, CE and Stab/Ord on a few thousand tokens cannot tell SAEs apart reliably."""
    n = split_intervals(store, "eval").n_rows
    if n < min(max_tokens, MIN_EVAL_ROWS):
        text = (
            f"the evaluation split of {store.loc.display} holds only {n:,} rows (fewer than {MIN_EVAL_ROWS:,}); "
            f"every metric is computed on them: harvest or import more tokens for comparisons that hold"
        )
        log.warning("%s", text)
        notes["eval_split"] = text


def evaluate(
    paths: list[str],
    store_url: str,
    *,
    use_model: bool = True,
    require_model: bool = False,
    model: str | None = None,
    max_tokens: int = 1_000_000,
    lm_tokens: int = 200_000,
    z_tokens: int = 100_000,
    z_max_latents: int = 8192,
    progressive_ce: bool = True,
    device: str = "cpu",
    progress: bool = True,
    pairs: str = "seeds",
    format: str | None = None,
) -> dict:
    if pairs not in ("seeds", "all"):
        raise UsageError(f"--pairs must be seeds or all; got {pairs!r}")
    store = ActivationStore(store_url)
    ckpts = find_checkpoints(paths, format)
    names = display_names(ckpts)
    notes: dict[str, str] = {}
    loaded = {}
    for c in ckpts:
        sae, cfg = load_any(c, format=format, device=device, store=store)
        require_matching_store(c, sae, cfg, store)
        name = names[c]
        _note_trained_elsewhere(name, cfg, store, notes)
        for i, text in enumerate(cfg.get("notes") or []):
            notes[f"{name}.load{i}"] = text
        loaded[name] = (sae, cfg, checkpoint_normalizer(cfg))
    _note_small_eval_split(store, max_tokens, notes)
    lm = _load_lm(store, model, use_model, require_model, notes, device)
    gt = store.ground_truth(["dictionary"])  # not the true codes: they can be far larger than the activations
    saes = {}
    figures = {"ea2": {}, "freq": {}, "matchings": {}}  # arrays for the plots, not part of the JSON
    for name, (sae, cfg, norm) in tracked(loaded.items(), "evaluate SAEs", "SAE", enabled=progress):
        rec = reconstruction_metrics(sae, norm, store, cfg["hook"], max_tokens=max_tokens)
        entry = {k: v for k, v in rec.items() if k not in ("freq", "ea2")}
        figures["ea2"][name] = rec["ea2"]
        figures["freq"][name] = rec["freq"]
        ea2 = power_law(rec["ea2"])
        entry.update(
            power_law_exponent=ea2["exponent"],
            power_law_r2=ea2["r2"],
            power_law_top90=power_law(rec["ea2"], top=0.9),  # the fit without the bent tail of the last ranks
            power_law_freq=power_law(rec["freq"]),
            power_law_decoder_spectrum=power_law(torch.linalg.svdvals(sae.W_dec.detach().double()).pow(2).numpy()),
        )
        entry.update(rsa(sae, norm, store, cfg["hook"]))
        entry.update(
            architecture=cfg["architecture"],
            format=cfg.get("format", "osae"),
            d_sae=sae.cfg.d_sae,
            hook=cfg["hook"],
            step=cfg.get("step"),
        )
        lm_keys = ("ce_loss_clean", "ce_loss_spliced", "ce_loss_ablated", "ce_loss_recovered", "kl")
        if lm is not None:
            from osae.evaluate.lm_metrics import lm_metrics

            try:
                grans = default_granularities(sae.cfg.d_sae) if progressive_ce else None
                entry.update(
                    lm_metrics(
                        lm,
                        sae,
                        norm,
                        store,
                        cfg["hook"],
                        max_tokens=lm_tokens,
                        granularities=grans,
                        progress=progress,
                        desc=f"CE and KL, {name}",
                    )
                )
            except ValueError as exc:
                entry.update({k: None for k in lm_keys})
                notes[f"{name}.lm"] = str(exc)
        else:
            entry.update({k: None for k in lm_keys})
        if gt is not None and "dictionary" in gt:
            m = match(sae.W_dec, gt["dictionary"])
            entry.update(stab_gt=m.stab, ord_gt=m.ord)
        saes[name] = entry
    compared = []
    names = sorted(loaded)
    families = {n: seed_family(loaded[n][1]) for n in names}
    chosen = pair_names(loaded, pairs, families)
    for a, b in tracked(chosen, f"compare {pairs} pairs", "pair", enabled=progress):
        Da, Db = loaded[a][0].W_dec, loaded[b][0].W_dec
        m = match(Da, Db)
        figures["matchings"].setdefault(a if pairs == "all" else families[a], (m.rows, m.cols, m.cosines))
        entry = {
            "a": a,
            "b": b,
            "same_family": families[a] == families[b],
            "stab": m.stab,
            "ord": m.ord,
            "matching": m.method,
            "stab_z": None,
            "ord_z": None,
            "prefix": prefix_curves(Da, Db),
        }
        if max(loaded[a][0].cfg.d_sae, loaded[b][0].cfg.d_sae) <= z_max_latents:
            mz = code_correlation(loaded[a], loaded[b], store, z_tokens, device).match()
            entry.update(stab_z=mz.stab, ord_z=mz.ord)
        else:
            notes["stab_z"] = f"Stab_Z/Ord_Z skipped above {z_max_latents} latents (K x K correlation matrix)"
        compared.append(entry)
    stitched = []
    for a, b in combinations(names, 2):
        (sa, ca, _), (sb, cb, _) = loaded[a], loaded[b]
        # seeds: two sizes of one architecture; all: any two sizes, from any architecture or library
        if sa.cfg.d_sae == sb.cfg.d_sae or (pairs == "seeds" and ca["architecture"] != cb["architecture"]):
            continue
        small, large = ((a, sa, ca), (b, sb, cb)) if sa.cfg.d_sae < sb.cfg.d_sae else ((b, sb, cb), (a, sa, ca))
        try:
            r = stitching((small[1], small[2]), (large[1], large[2]), store, small[2]["hook"], max_tokens=max_tokens)
            stitched.append({"small": small[0], "large": large[0], **r})
        except ValueError as exc:
            notes[f"stitching.{small[0]}.{large[0]}"] = str(exc)
    return {
        "store": store.loc.display,
        "saes": saes,
        "pairs": compared,
        "stitching": stitched,
        "notes": notes,
        "_figures": figures,
    }


@torch.no_grad()
def code_correlation(a, b, store: ActivationStore, max_tokens: int, device: str, batch: int = 4096) -> CodeCorrelation:
    """Cross-moments of two SAEs' codes over the same evaluation rows; a and b are (sae, cfg, normalizer)."""
    (sae_a, cfg_a, norm_a), (sae_b, _, norm_b) = a, b
    acc = CodeCorrelation(sae_a.cfg.d_sae, sae_b.cfg.d_sae)
    for rows in iter_rows(store, cfg_a["hook"], "eval", max_tokens=max_tokens, batch=batch, device=device):
        za = encode_rows(sae_a, norm_a, rows).code.dense(sae_a.cfg.d_sae)
        zb = encode_rows(sae_b, norm_b, rows).code.dense(sae_b.cfg.d_sae)
        acc.add(za.cpu(), zb.cpu())
    return acc


def _load_lm(store: ActivationStore, model: str | None, use_model: bool, require: bool, notes: dict, device: str):
    if not use_model:
        notes["lm"] = "model-level metrics skipped (--no-model)"
        return None
    source = model or (store.meta.get("provenance", {}).get("model") or {}).get("source")
    if not source:
        notes["lm"] = "the store names no model (not harvested by osae); pass --model to compute CE and KL"
        if require:
            raise UsageError(notes["lm"])
        return None
    from osae.harvest.models import load_model

    try:
        return load_model(source, device=device).model
    except ValueError as exc:
        if require:
            raise
        notes["lm"] = f"model-level metrics skipped: {exc}"
        log.warning("%s", notes["lm"])
        return None


def write_outputs(result: dict, out: Path) -> None:
    """metrics.json, a tidy table (one row per SAE and metric) as CSV and parquet, PNG plots, report.md."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from osae.evaluate.report import (
        matching_scatter,
        power_law_plot,
        prefix_plot,
        progressive_plot,
        write_report,
    )

    out.mkdir(parents=True, exist_ok=True)
    figures = result.get("_figures", {})
    result = public(result)
    (out / "metrics.json").write_text(json.dumps(result, indent=1, default=_json_default))
    made = [
        prefix_plot(result, out),
        progressive_plot(result, out),
        power_law_plot(figures.get("ea2", {}), out),
        matching_scatter(figures.get("matchings", {}), out),
    ]
    write_report(result, out, [f for f in made if f is not None])
    rows = {"sae": [], "metric": [], "value": []}
    for name, entry in result["saes"].items():
        for key, val in entry.items():
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                rows["sae"].append(name), rows["metric"].append(key), rows["value"].append(float(val))
            elif key in ("progressive_fvu", "progressive_ce", "progressive_ce_recovered"):
                label = {"progressive_fvu": "fvu", "progressive_ce": "ce", "progressive_ce_recovered": "ce_recovered"}[
                    key
                ]
                for g, v in val.items():
                    if v is not None:
                        rows["sae"].append(name), rows["metric"].append(f"{label}@{g}"), rows["value"].append(float(v))
    table = pa.table(rows)
    pq.write_table(table, out / "metrics.parquet")
    pacsv.write_csv(table, out / "metrics.csv")


def public(result: dict) -> dict:
    """The result without its plotting arrays (what JSON consumers get)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)
