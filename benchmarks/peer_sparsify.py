"""osae against EleutherAI's sparsify, side by side on one store (issue 13). Results go to docs/benchmarks.md.

    bash benchmarks/peer_setup.sh    # once: .venv-peers with eai-sparsify and osae on torch 2.13.0
    .venv-peers/bin/python benchmarks/peer_sparsify.py --store acts.zarr --tokens 2000000 --K 4096 --k 32 \
        --batch 4096 --out /tmp/peer --arches topk,batchtopk --osae-args "" --osae-args "--lr 2e-3"

Same data: the store's training split is read once through osae's ShuffledLoader, with the batch size,
shuffle seed and buffer that `osae fit` resolves for the run, so both trainers see the same rows in the same
order, raw (store units). sparsify trains on them unnormalised, as it does on hooked activations (its loss
is the batch FVU); osae applies its own default normalisation, as `osae fit` does. Same scoring: every SAE
is scored on the same held-out rows (the store's eval split) by osae's reconstruction metrics (FVU =
sum ||x - x_hat||^2 / sum ||x - mean||^2 in store units, L0, latents never active on those rows).

sparsify runs through its own Trainer with its defaults (signum under schedule-free, learning rate from K,
no AuxK, FVU loss); its Trainer reads activations from a hooked model, so a stand-in "model" whose one
layer returns the next rows of the stream is hooked instead. osae runs as the `osae fit` command.

Every training call is a child process; its CPU-s (user + sys), wall time and peak RSS come from wait4,
its threads are set alike (OMP_NUM_THREADS and torch threads), the 1-minute load is read before it starts.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# osae is imported inside the parent's functions only, so the sparsify child loads torch and sparsify alone.
HOOKPOINT = "layers.0"  # the stand-in model's one layer, which sparsify hooks
MEASURED = ("load_1min", "cpu_s", "user_s", "sys_s", "wall_s", "peak_rss_mib", "fit_cpu_s", "fit_wall_s")
# Flags that define the comparison: the benchmark sets them for both trainers.
FIXED_FLAGS = (
    "--store", "--out", "--hook", "--arch", "--sweep", "--config", "--resume", "--dry-run",
    "--tokens", "--batch-size", "--dict-size", "--k", "--seeds", "--data-seed",
)  # fmt: skip


# -- the sparsify child ------------------------------------------------------------------------------
class _StreamLayer(nn.Module):
    """Positions (B, L) of the stream file -> their rows (B, L, D) float32. Positions of a batch are
    consecutive (the Trainer reads its dataset in order), so one read serves the whole batch."""

    def __init__(self, path: str, d: int, dtype: str):
        super().__init__()
        self.path, self.d, self.dtype = path, d, np.dtype(dtype)

    def forward(self, pos_BL: torch.Tensor) -> torch.Tensor:
        start, n = int(pos_BL.reshape(-1)[0]), pos_BL.numel()
        rows = np.fromfile(self.path, self.dtype, n * self.d, offset=start * self.d * self.dtype.itemsize)
        return torch.from_numpy(rows.astype(np.float32)).view(*pos_BL.shape, self.d)


class _StreamModel(nn.Module):
    """What sparsify's Trainer needs of a model (base_model, device, dummy_inputs, a forward), no weights."""

    def __init__(self, path: str, d: int, dtype: str):
        super().__init__()
        self.layers = nn.ModuleList([_StreamLayer(path, d, dtype)])

    @property
    def base_model(self) -> nn.Module:
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dummy_inputs(self) -> dict:
        return {"input_ids": torch.zeros(1, 1, dtype=torch.long)}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.layers[0](input_ids)


class _Positions(torch.utils.data.Dataset):
    """Item i: {"input_ids": positions i*L .. i*L+L-1 of the stream} (a "sequence" of L rows)."""

    def __init__(self, n_rows: int, seq: int):
        self.n, self.seq = n_rows // seq, seq

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": torch.arange(i * self.seq, (i + 1) * self.seq)}


def _child_sparsify(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    from sparsify import SaeConfig, TrainConfig, Trainer

    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    cfg = TrainConfig(
        SaeConfig(num_latents=spec["K"], k=spec["k"]),
        batch_size=spec["batch"] // spec["seq"],
        hookpoints=[HOOKPOINT],
        save_dir=spec["save_dir"],
        run_name="topk",
        log_to_wandb=False,
        **spec["overrides"],
    )
    model = _StreamModel(spec["stream"], spec["d"], spec["dtype"])
    trainer = Trainer(cfg, _Positions(spec["n_rows"], spec["seq"]), model)
    trainer.fit()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    info = {
        "fit_cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
        "fit_wall_s": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "optimizer": cfg.optimizer,
        # the peak rate: with Adam, sparsify's linear schedule has taken "lr" back to 0 by now
        "lr": trainer.optimizers[0].param_groups[0].get("initial_lr", trainer.optimizers[0].param_groups[0]["lr"]),
        "auxk_alpha": cfg.auxk_alpha,
        "dead_feature_threshold": cfg.dead_feature_threshold,
        "steps": trainer.global_step,
    }
    Path(spec["result"]).write_text(json.dumps(info, indent=1))


# -- the parent: data, children, scores --------------------------------------------------------------
def _measured(cmd: list[str], log: Path, threads: int) -> dict:
    """Run `cmd` as a child with `threads` threads; its own CPU-s, wall time and peak RSS (wait4)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode:
        from osae.errors import UsageError

        raise UsageError(f"{shlex.join(cmd[:3])} ... failed (exit {proc.returncode}); see {log}")
    return {
        "load_1min": load,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "wall_s": wall,
        "peak_rss_mib": ru.ru_maxrss / 1024,  # KiB on Linux
    }


def _osae_plan(args, exe: Path, arch: str, extra: str, index: int) -> dict:
    """The `osae fit` command of one recipe and its resolved configuration (from --dry-run)."""
    from osae.errors import UsageError
    from osae.train.config import TrainConfig

    flags = shlex.split(extra)
    fixed = [f for f in flags if f.split("=")[0] in FIXED_FLAGS]
    if fixed:
        raise UsageError(f"--osae-args may not set {fixed[0].split('=')[0]}: the benchmark sets it for both trainers")
    out = Path(args.out) / f"osae-{index:02d}-{arch}"
    cmd = [str(exe), "fit", "--store", args.store, "--arch", arch, "--dict-size", str(args.K), "--k", str(args.k)]
    cmd += ["--batch-size", str(args.batch), "--tokens", str(args.tokens), "--out", str(out), "--overwrite"]
    cmd += (["--hook", args.hook] if args.hook else []) + flags
    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True)
    if dry.returncode:
        what = f"osae fit --arch {arch} {extra}".strip()
        raise UsageError(f"{what}: {(dry.stderr.strip().splitlines() or ['failed'])[-1]}")
    resolved = json.loads(dry.stdout)
    names = [s.name for s in TrainConfig.from_dict(resolved).saes]
    if len(names) != 1:
        raise UsageError(f"--osae-args {extra!r} gives {len(names)} SAEs per call; give one recipe per --osae-args")
    return {"arch": arch, "args": extra, "cmd": cmd, "resolved": resolved, "sae_dir": str(out / names[0])}


def _write_stream(store, hook: str, resolved: dict, path: Path) -> tuple[int, str]:
    """The first tokens // batch_size batches `osae fit` trains on, raw, to `path`; (rows, numpy dtype)."""
    from osae.store import LoaderConfig, ShuffledLoader

    # As osae.train.fit builds its loader, without the normalisation; float16 rows stay float16 (exact).
    cfg = LoaderConfig(
        batch_size=resolved["batch_size"],
        buffer_bytes=resolved["buffer_bytes"],
        seed=resolved["data_seed"],
        dtype="store",
    )
    dtype = "float16" if store.dtype(hook) == "float16" else "float32"
    n_steps = resolved["tokens"] // resolved["batch_size"]
    loader = ShuffledLoader(store, hook, cfg)
    with open(path, "wb") as f:
        for _, x in zip(range(n_steps), loader):
            f.write(x.to(getattr(torch, dtype)).numpy().tobytes())
    return n_steps * resolved["batch_size"], dtype


def _score(store, hook: str, d_sae: int, max_tokens: int, encode) -> dict:
    """osae's reconstruction metrics on the eval split; `encode(rows) -> CodeBatch` is the trainer's code."""
    from osae.evaluate.reconstruction import Accumulator
    from osae.store import iter_rows

    acc = Accumulator(d_sae, [])
    for rows in iter_rows(store, hook, "eval", max_tokens=max_tokens):
        acc.add(encode(rows))
    res = acc.result(store.d_model(hook))
    return {k: res[k] for k in ("n_tokens", "fvu", "mse", "cosine", "l0", "dead_fraction", "dense_fraction")}


def _sparsify_encoder(sae_dir: Path):
    from sparsify import SparseCoder

    from osae.evaluate.batches import CodeBatch
    from osae.store import Normalizer
    from osae.train.architectures.codes import SparseCode

    sae = SparseCoder.load_from_disk(sae_dir).eval()

    @torch.no_grad()
    def encode(rows):
        acts, idx, _ = sae.encode(rows.x)
        recon = sae.decode(acts, idx)
        return CodeBatch(rows, rows.x, SparseCode(idx, acts), sae, Normalizer("none"), _recon=recon)

    return sae.num_latents, encode


def _osae_encoder(sae_dir: Path):
    from osae.evaluate.batches import checkpoint_normalizer, encode_rows
    from osae.train.checkpoint import load_frozen

    sae, cfg = load_frozen(sae_dir)
    normalizer = checkpoint_normalizer(cfg)
    return sae.cfg.d_sae, lambda rows: encode_rows(sae, normalizer, rows)


def _tokens_per_seq(batch: int) -> int:
    """A divisor of the batch as sparsify's "sequence" length (its batch_size counts sequences)."""
    return max(s for s in range(1, min(batch, 256) + 1) if batch % s == 0)


def _overrides(pairs: list[str]) -> dict:
    """--sparsify-set KEY=VALUE pairs as TrainConfig fields (VALUE as JSON where it parses, else a string)."""
    import dataclasses

    from sparsify import TrainConfig

    from osae.errors import UsageError

    fixed = {"sae", "batch_size", "hookpoints", "layers", "save_dir", "run_name", "log_to_wandb", "init_seeds"}
    allowed = {f.name for f in dataclasses.fields(TrainConfig)} - fixed
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or key not in allowed:
            raise UsageError(f"--sparsify-set takes KEY=VALUE with KEY one of {', '.join(sorted(allowed))}; got {p!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "eai_sparsify": md.version("eai-sparsify"),
        "osae": md.version("osae"),
    }


def _table(rows: list[dict]) -> str:
    ref = rows[0]
    lines = [
        "| trainer | recipe | CPU-s (1-min load), least of the rounds | fit CPU-s | wall s | peak RSS MiB "
        "| FVU | L0 | dead | CPU-s / sparsify | FVU / sparsify |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fit = f"{r['fit_cpu_s']:.1f}" if r.get("fit_cpu_s") is not None else "-"
        cpu = f"{r['cpu_s']:.1f} ({r['load_1min']:.1f})"
        if len(r["rounds"]) > 1:
            cpu += " of " + "/".join(f"{m['cpu_s']:.1f}" for m in r["rounds"])
        lines.append(
            f"| {r['trainer']} | {r['recipe'] or 'defaults'} | {cpu} | {fit} "
            f"| {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['fvu']:.4f} | {r['l0']:.1f} "
            f"| {100 * r['dead_fraction']:.1f}% | {r['cpu_s'] / ref['cpu_s']:.2f} | {r['fvu'] / ref['fvu']:.2f} |"
        )
    return "\n".join(lines)


def _check(args) -> tuple[Path, list[str]]:
    """The osae command beside this interpreter and the architectures, after checking every argument."""
    from osae.errors import UsageError

    if importlib.util.find_spec("sparsify") is None:
        raise UsageError("sparsify is not importable here: run `bash benchmarks/peer_setup.sh`, then use .venv-peers")
    exe = Path(sys.executable).parent / "osae"
    if not exe.exists():
        raise UsageError(f"no osae command next to {sys.executable}: run `bash benchmarks/peer_setup.sh`")
    for name in ("tokens", "K", "k", "batch", "threads", "eval_tokens", "rounds"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    if args.k > args.K:
        raise UsageError(f"--k must be at most --K; got k={args.k}, K={args.K}")
    if args.tokens < args.batch:
        raise UsageError(f"--tokens ({args.tokens}) must be at least one batch ({args.batch})")
    arches = [a.strip() for a in args.arches.split(",") if a.strip()]
    if not arches:
        raise UsageError("--arches names no architecture")
    return exe, arches


def _sparsify_row(args, spec: dict, overrides: dict, last: bool) -> dict:
    """Train sparsify in a child; the row without scores, and the directory of its SAE."""
    out = Path(spec["save_dir"])
    (out / "spec.json").write_text(json.dumps(spec, indent=1))
    log = Path(args.out) / "logs" / "sparsify.log"
    m = _measured([sys.executable, __file__, "--child-sparsify", str(out / "spec.json")], log, args.threads)
    child = json.loads(Path(spec["result"]).read_text())
    if last and not args.keep_stream:
        Path(spec["stream"]).unlink()
    recipe = " ".join(f"{k}={v}" for k, v in overrides.items())
    return {
        "trainer": "sparsify topk",
        "recipe": recipe,
        **m,
        **child,
        "log": str(log),
        "sae": str(out / "topk" / HOOKPOINT),
    }


def _osae_row(args, plan: dict, index: int) -> dict:
    """Run one `osae fit` recipe; the row without scores."""
    log = Path(args.out) / "logs" / f"osae-{index:02d}-{plan['arch']}.log"
    m = _measured(plan["cmd"], log, args.threads)
    # `osae fit` takes its threads from OMP_NUM_THREADS: ask a torch under the same environment what it uses.
    probe = [sys.executable, "-c", "import torch; print(torch.get_num_threads(), torch.get_num_interop_threads())"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    threads, interop = (int(t) for t in subprocess.run(probe, capture_output=True, text=True, env=env).stdout.split())
    saved = json.loads((Path(plan["sae_dir"]) / "config.json").read_text())
    row = {"trainer": f"osae {plan['arch']}", "recipe": plan["args"], **m, "fit_cpu_s": None, "log": str(log)}
    row |= {"threads": threads, "interop_threads": interop, "lr": saved.get("lr"), "steps": saved.get("step")}
    run = json.loads((Path(plan["sae_dir"]).parent / "run.json").read_text())
    settings = {k: run.get(k) for k in ("lr_warmup_steps", "lr_schedule", "lr_decay_frac", "normalization")}
    # run.json's "resolved": the values osae derived from the run's length, where this osae records them
    return row | {"settings": settings, "derived": run.get("resolved"), "command": shlex.join(plan["cmd"])}


def run(args) -> dict:
    from osae.errors import UsageError
    from osae.store import ActivationStore

    exe, arches = _check(args)
    overrides = _overrides(args.sparsify_set)
    torch.set_num_threads(args.threads)
    store = ActivationStore(args.store)
    hook = store.resolve_hook(args.hook)
    out = Path(args.out)

    recipes = [(a, x) for x in args.osae_args for a in arches]
    plans = [_osae_plan(args, exe, a, x, i) for i, (a, x) in enumerate(recipes)]
    stream_keys = ("batch_size", "tokens", "data_seed", "buffer_bytes")
    ref = plans[0]["resolved"]
    for p in plans:
        if any(p["resolved"][k] != ref[k] for k in stream_keys):
            raise UsageError(f"osae fit {p['arch']} {p['args']!r} reads another batch stream than the first recipe")
    (out / "logs").mkdir(parents=True, exist_ok=True)  # only once every check has passed
    (out / "sparsify").mkdir(exist_ok=True)
    n_rows, dtype = _write_stream(store, hook, ref, out / "stream.bin")
    spec = {
        "stream": str(out / "stream.bin"),
        "d": store.d_model(hook),
        "dtype": dtype,
        "n_rows": n_rows,
        "seq": _tokens_per_seq(args.batch),
        "K": args.K,
        "k": args.k,
        "batch": args.batch,
        "threads": args.threads,
        "overrides": overrides,
        "save_dir": str(out / "sparsify"),
        "result": str(out / "sparsify" / "child.json"),
    }
    # Every training call first, the scoring after: the parent's own work stays out of the load readings.
    # Rounds interleave the calls, so drift of a shared machine hits every row alike; a row keeps its
    # least-CPU round (contention only adds CPU-s: spinning threads, cache misses) and lists them all.
    rows: list[dict] = []
    for rnd in range(args.rounds):
        last = rnd == args.rounds - 1
        now = [_sparsify_row(args, spec, overrides, last)]
        now += [_osae_row(args, p, i) | {"sae": p["sae_dir"]} for i, p in enumerate(plans)]
        rows = rows or [r | {"rounds": []} for r in now]
        for r, n in zip(rows, now):
            r["rounds"].append({k: n[k] for k in MEASURED if k in n})
    for r in rows:
        r.update(min(r["rounds"], key=lambda m: m["cpu_s"]))
    for r in rows:
        d_sae, enc = (_sparsify_encoder if r["trainer"].startswith("sparsify") else _osae_encoder)(Path(r["sae"]))
        r.update(_score(store, hook, d_sae, args.eval_tokens, enc))
    results = {
        "machine": _machine(),
        "store": args.store,
        "hook": hook,
        "settings": {
            "tokens": n_rows,
            "K": args.K,
            "k": args.k,
            "batch": args.batch,
            "threads": args.threads,
            "rounds": args.rounds,
        },
        "stream": {k: ref[k] for k in stream_keys} | {"dtype": dtype, "rows": n_rows, "sparsify_seq": spec["seq"]},
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-sparsify"]:
        _child_sparsify(argv[1])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="activation store (path or URL)")
    p.add_argument("--hook", default=None, help="hook (default: the store's only hook)")
    p.add_argument("--tokens", type=int, default=2_000_000, help="training tokens, both trainers")
    p.add_argument("--K", type=int, default=4096, help="dictionary size")
    p.add_argument("--k", type=int, default=32, help="active latents per token")
    p.add_argument("--batch", type=int, default=4096, help="tokens per step")
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of every training call")
    p.add_argument("--eval-tokens", type=int, default=1_000_000, help="held-out rows scored (at most)")
    p.add_argument("--rounds", type=int, default=1, help="train every row this many times, interleaved")
    p.add_argument("--arches", default="topk", help="osae architectures, comma-separated (one row per recipe)")
    p.add_argument(
        "--osae-args",
        action="append",
        help='extra `osae fit` flags of one recipe, repeat for several (default: one recipe, "" = defaults); '
        "write --osae-args=--flag when the flags hold no space",
    )
    p.add_argument("--sparsify-set", action="append", default=[], help="KEY=VALUE for sparsify's TrainConfig")
    p.add_argument("--keep-stream", action="store_true", help="keep DIR/stream.bin (the training rows, raw)")
    p.add_argument("--out", required=True, help="directory for results.json, logs and checkpoints")
    args = p.parse_args(argv)
    args.osae_args = args.osae_args or [""]
    from osae.errors import OsaeError

    try:
        results = run(args)
    except OsaeError as exc:
        print(f"peer_sparsify: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(_table(results["rows"]))
    print(f"\n{results['machine']['cpu']}, {args.threads} threads; results in {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
