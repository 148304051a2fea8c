"""The first-GPU-machine check of issue 13: real `osae` commands on cuda, timed, with a table of the results.

Stages (each one process, so a failure or hang stops only itself): preflight (torch, CUDA, GPU names),
harvest of the embedded model in float16 and in bfloat16, `osae store verify` of both stores, `osae fit
--sweep` of every architecture in one pass with bf16 autocast, `osae evaluate` of that run with the model
(CE/KL), the same sweep under `accelerate launch --multi_gpu` over every visible GPU (nccl), and one
`osae fit` per architecture for its own tokens/s. Writes gpu_check.md and gpu_check.json (and gpu_check.log,
every stage's command and stderr) to --out-dir ($OUT, else the current directory); exits 1 if a stage failed.

Peak GPU memory is the largest `nvidia-smi` memory.used seen while a stage runs (sampled every 0.25 s, the
busiest GPU; it includes the CUDA context and the caching allocator's reserve, not max_memory_allocated,
which a child process cannot report). Peak RSS is the stage's process tree, sampled alike.

    bash benchmarks/gpu_check.sh                                    # on the GPU machine, under 5 minutes
    OSAE_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh --quick  # dry check of the script on CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ARCHS = ("topk", "batchtopk", "matryoshka", "matryoshka-random", "osae", "relu", "hybridorder")
DENSE = ("relu", "hybridorder")  # k is not one of their settings


@dataclass(frozen=True)
class Sizes:
    harvest_tokens: int
    sweep_tokens: int  # every architecture in one pass (and the DDP run)
    arch_tokens: int  # each architecture alone, for its tokens/s
    batch_size: int
    d_sae: int
    k: int
    eval_tokens: int
    lm_tokens: int
    budget_s: float  # the whole check; a stage gets at most what is left


# Full: the issue's sizes, about 3-4 minutes on one H200 (start-up dominates: each stage imports torch).
FULL = Sizes(200_000, 2_097_152, 1_048_576, 4096, 4096, 32, 50_000, 20_000, 270.0)
# Quick: a proof that the script and every command run, a few minutes on 2 CPU cores.
QUICK = Sizes(20_000, 20_480, 10_240, 1024, 256, 8, 5_000, 2_000, 600.0)


@dataclass
class Stage:
    name: str
    command: list[str]
    timeout_s: float
    needs: tuple[str, ...] = ()  # stages that must pass first
    status: str = "not run"  # pass, FAIL, skip (benign), not run (counts as a failure)
    wall_s: float | None = None
    peak_gpu_mib: int | None = None
    peak_rss_mib: int | None = None
    figures: dict = field(default_factory=dict)
    note: str = ""
    stderr_tail: str = ""
    stdout: str = field(default="", repr=False)


class Sampler(threading.Thread):
    """Peak GPU memory.used (busiest GPU, via nvidia-smi) and peak RSS of a process tree while it runs."""

    def __init__(self, pid: int, gpu: bool):
        super().__init__(daemon=True)
        self.pid, self.gpu, self.stop = pid, gpu, threading.Event()
        self.gpu_mib: int | None = None
        self.rss_mib: int | None = None

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self._rss()
            if self.gpu:
                self._gpu()

    def _rss(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a child that just exited
                pass
        self.rss_mib = max(self.rss_mib or 0, total >> 20)

    def _gpu(self) -> None:
        used = gpu_memory_used()
        if used:
            self.gpu_mib = max(self.gpu_mib or 0, max(used))


def gpu_memory_used() -> list[int]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(v) for v in out.split() if v.strip().isdigit()]


def run_stage(st: Stage, logs: Path, env: dict, gpu: bool, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left < 5:
        st.status, st.note = "not run", "time budget spent"
        return
    timeout = min(st.timeout_s, left)
    out_path, err_path = logs / f"{st.name}.out", logs / f"{st.name}.err"
    print(f"gpu_check: {st.name}: {shown(st.command)}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        # own session, so a timeout can end the whole tree (accelerate's ranks included) by its group id
        proc = subprocess.Popen(st.command, stdout=out, stderr=err, env=env, start_new_session=True)
        sampler = Sampler(proc.pid, gpu)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = None
        sampler.stop.set()
        sampler.join()
    st.wall_s = time.monotonic() - t0
    st.peak_gpu_mib, st.peak_rss_mib = sampler.gpu_mib, sampler.rss_mib
    st.stdout = out_path.read_text()
    st.stderr_tail = "\n".join(err_path.read_text(errors="replace").splitlines()[-15:])
    if rc is None:
        st.status, st.note = "FAIL", f"timed out after {timeout:.0f} s"
    elif rc != 0:
        st.status, st.note = "FAIL", f"exit status {rc}"
    else:
        st.status = "pass"
    print(f"gpu_check: {st.name}: {st.status} in {st.wall_s:.1f} s {st.note}", file=sys.stderr, flush=True)


def shown(command: list[str]) -> str:
    """The command as a line (preflight's inline script as `-c PREFLIGHT`)."""
    return " ".join("PREFLIGHT" if "\n" in a else a for a in command)


def stdout_json(st: Stage) -> dict:
    """The --json summary: the first JSON object on stdout (under accelerate, rank 0 prints first)."""
    start = st.stdout.find("{")
    return json.JSONDecoder().raw_decode(st.stdout[start:])[0] if start >= 0 else {}


def check(st: Stage, ok: bool, why: str) -> None:
    """Fail a stage whose command succeeded but whose figures are wrong (NaN from autocast, say)."""
    if st.status == "pass" and not ok:
        st.status, st.note = "FAIL", why


def finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def read_harvest(st: Stage) -> None:
    if st.status != "pass":
        return
    n = int(stdout_json(st).get("n_tokens", 0))
    st.figures = {"tokens": n, "tokens_per_s": n / st.wall_s}
    st.note = f"{n:,} tokens; tokens/s includes start-up"
    check(st, n > 0, "stored no tokens")


def read_fit(st: Stage) -> None:
    """tokens/s end to end (the whole command) and steady (the trainer's own windows of 50 steps after the
    first, which holds the warm-up), final training FVU per SAE from metrics.jsonl."""
    if st.status != "pass":
        return
    summary = stdout_json(st)
    tokens = int(summary.get("tokens", 0))
    saes = {}
    for d in summary.get("saes", []):
        lines = [json.loads(line) for line in Path(d, "metrics.jsonl").read_text().splitlines() if line.strip()]
        rates = [line["tokens_per_s"] for line in lines]
        steady = statistics.median(rates[1:]) if len(rates) > 1 else (rates[0] if rates else None)
        saes[Path(d).name] = {"fvu": lines[-1]["fvu"] if lines else None, "steady_tokens_per_s": steady}
    st.figures = {"tokens": tokens, "tokens_per_s": tokens / st.wall_s, "saes": saes}
    bad = [n for n, s in saes.items() if not finite(s["fvu"])]
    check(st, tokens > 0 and bool(saes) and not bad, f"non-finite training FVU: {', '.join(bad)}" if bad else "no SAEs")


def read_evaluate(st: Stage) -> None:
    if st.status != "pass":
        return
    keys = ("fvu", "l0", "dead_fraction", "ce_loss_recovered", "delta_ce", "kl")
    saes = {name: {k: m.get(k) for k in keys} for name, m in stdout_json(st).get("saes", {}).items()}
    st.figures = {"saes": saes}
    bad = [n for n, m in saes.items() if not all(finite(m[k]) for k in keys) or not m["fvu"] < 1.0]
    check(st, bool(saes) and not bad, f"non-finite figures or FVU >= 1: {', '.join(bad)}" if bad else "no SAEs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep_file(path: Path, z: Sizes) -> Path:
    entries = [{"arch": a, "seeds": [0], "d_sae": z.d_sae, **({} if a in DENSE else {"k": z.k})} for a in ARCHS]
    path.write_text(json.dumps(entries, indent=1))
    return path


PREFLIGHT = """
import json, sys, sysconfig, pathlib, importlib.metadata as md
import torch
cuda = torch.cuda.is_available()
n = torch.cuda.device_count() if cuda else 0
v = {}
for p in ("osae", "transformers", "accelerate", "zarr", "numcodecs"):
    try:
        v[p] = md.version(p)
    except md.PackageNotFoundError:
        v[p] = __import__(p).__dict__.get("__version__", "?")
stdlib = sum(1 for _ in pathlib.Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
    "cuda_available": cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(n)],
    "bf16": bool(cuda and torch.cuda.is_bf16_supported()), "stdlib_py_files": stdlib, "versions": v}))
if sys.argv[1] != "cpu" and not cuda:
    sys.exit("preflight: the device is " + sys.argv[1] + " but torch " + torch.__version__ + " sees no CUDA GPU")
"""


def plan(z: Sizes, device: str, autocast: str, work: Path) -> list[Stage]:
    py = [sys.executable, "-m", "osae"]
    stores = {"fp16": work / "fp16.zarr", "bf16": work / "bf16.zarr"}
    sweep = sweep_file(work / "sweep.json", z)
    fit = ["--batch-size", str(z.batch_size), "--autocast", autocast, "--json"]
    stages = [Stage("preflight", [sys.executable, "-c", PREFLIGHT, device], 60)]
    for dt, model_dtype in (("fp16", "float16"), ("bf16", "bfloat16")):
        cmd = [*py, "harvest", "--layer", "3", "--tokens", str(z.harvest_tokens), "--dtype", model_dtype]
        stages.append(Stage(f"harvest-{dt}", [*cmd, "--device", device, "--out", str(stores[dt]), "--json"], 90))
    for dt in stores:
        cmd = [*py, "store", "verify", str(stores[dt]), "--json"]
        stages.append(Stage(f"verify-{dt}", cmd, 45, (f"harvest-{dt}",)))
    store, needs = str(stores["fp16"]), ("harvest-fp16",)
    common = ["--store", store, "--sweep", str(sweep), "--tokens", str(z.sweep_tokens), *fit]
    cmd = [*py, "fit", *common, "--device", device, "--out", str(work / "run")]
    stages.append(Stage("fit-sweep", cmd, 120, needs))
    ev = ["--store", store, "--out", str(work / "report"), "--max-tokens", str(z.eval_tokens)]
    ev += ["--lm-tokens", str(z.lm_tokens), "--require-model", "--device", device, "--json"]
    stages.append(Stage("evaluate", [*py, "evaluate", str(work / "run"), *ev], 120, ("fit-sweep",)))
    # On CPU two gloo processes prove the launch path; on GPUs one process per GPU, nccl. --device auto, not
    # cuda: fit maps auto to cuda:LOCAL_RANK, while "cuda" would put every rank on GPU 0.
    procs = 2 if device == "cpu" else 0  # the GPU count is set once preflight has read it
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port()), "-m", "osae", "fit", *common]
    ddp_device = "cpu" if device == "cpu" else "auto"
    cmd = [*launch, "--device", ddp_device, "--out", str(work / "run-ddp")]
    stages.append(Stage("ddp", cmd, 120, needs if device == "cpu" else ("preflight", *needs)))
    for a in ARCHS:
        size = ["--dict-size", str(z.d_sae), *([] if a in DENSE else ["--k", str(z.k)])]
        cmd = [*py, "fit", "--store", store, "--arch", a, *size, "--tokens", str(z.arch_tokens), *fit]
        stages.append(Stage(f"fit-{a}", [*cmd, "--device", device, "--out", str(work / f"run-{a}")], 60, needs))
    return stages


def execute(stages: list[Stage], work: Path, device: str, budget_s: float) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env |= {"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", "OSAE_DEBUG": "1"}  # tracebacks in the failure tails
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    gpu = device != "cpu" and shutil.which("nvidia-smi") is not None
    deadline = time.monotonic() + budget_s
    by = {s.name: s for s in stages}
    info: dict = {}
    for st in stages:
        unmet = [n for n in st.needs if by[n].status != "pass"]
        if unmet:
            st.status, st.note = "not run", f"needs {', '.join(unmet)}, which did not pass"
            continue
        if st.name == "ddp" and device != "cpu" and info.get("n_gpus", 0) < 2:
            st.status, st.note = "skip", f"{info.get('n_gpus', 0)} GPU visible: nothing to launch over (fit-sweep ran)"
            print(f"gpu_check: ddp: skipped, {st.note}", file=sys.stderr, flush=True)
            continue
        if st.name == "ddp" and device != "cpu":  # one process per GPU that torch sees; batches split evenly
            n, i = info["n_gpus"], st.command.index("--batch-size") + 1
            st.command[st.command.index("--num_processes") + 1] = str(n)
            st.command[i] = str(int(st.command[i]) // n * n)
        run_stage(st, logs, env, gpu, deadline)
        try:
            if st.name == "preflight":  # it prints what it found before failing on a missing GPU
                info = stdout_json(st)
                info["n_gpus"] = len(info.get("gpus", []))
            elif st.name.startswith("harvest"):
                read_harvest(st)
            elif st.name.startswith(("fit", "ddp")):
                read_fit(st)
            elif st.name == "evaluate":
                read_evaluate(st)
        except (ValueError, KeyError, TypeError, OSError) as exc:  # output not as expected: this stage fails
            st.status, st.note = "FAIL", f"could not read its output: {type(exc).__name__}: {exc}"
    if by["ddp"].status == "pass" and by["fit-sweep"].status == "pass":
        one, many = by["fit-sweep"].figures["saes"], by["ddp"].figures["saes"]
        diff = max(abs(one[n]["fvu"] - many[n]["fvu"]) for n in one if n in many)
        cmd = by["ddp"].command
        procs, backend = cmd[cmd.index("--num_processes") + 1], "gloo" if device == "cpu" else "nccl"
        by["ddp"].note = f"{procs} processes ({backend}); max abs(final FVU - fit-sweep's) {diff:.2e}"
    return info


def fmt(v, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def report(stages: list[Stage], info: dict, meta: dict) -> str:
    by = {s.name: s for s in stages}
    failed = [s.name for s in stages if s.status in ("FAIL", "not run")]
    gpus = ", ".join(info.get("gpus", [])) or "none"
    lines = [
        "# osae GPU check",
        "",
        f"- {meta['date']}, host {meta['host']}, mode {meta['mode']}, device {meta['device']}, "
        f"autocast {meta['autocast']}",
        f"- GPU: {gpus} (torch.cuda.get_device_name); nvidia-smi: {meta['nvidia_smi'] or 'not found'}",
        f"- python {info.get('python', '?')}, torch {info.get('torch', '?')} (CUDA {info.get('cuda')}), "
        + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items()),
        f"- total wall time {meta['wall_s']:.0f} s; **{'FAIL: ' + ', '.join(failed) if failed else 'PASS'}**",
        "",
        "| stage | result | wall s | tokens/s | peak GPU MiB | peak RSS MiB | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        rate = s.figures.get("tokens_per_s")
        lines.append(
            f"| {s.name} | {s.status} | {fmt(s.wall_s, '.1f')} | {fmt(rate)} | {fmt(s.peak_gpu_mib)} "
            f"| {fmt(s.peak_rss_mib)} | {cell(s.note)} |"
        )
    lines += ["", "tokens/s: stored (harvest) or trained (fit) tokens over the command's whole wall time.", ""]
    lines += ["## Fit per architecture", ""]
    lines += ["| arch | tokens | steady tokens/s | end-to-end tokens/s | final train FVU | in fit-sweep |"]
    lines += ["|---|---|---|---|---|---|"]
    sweep = by["fit-sweep"].figures.get("saes", {})
    for a in ARCHS:
        s = by[f"fit-{a}"]
        sae = next(iter(s.figures.get("saes", {}).values()), {})
        in_sweep = next((v["fvu"] for n, v in sweep.items() if n.startswith(f"{a}-K")), None)
        lines.append(
            f"| {a} | {fmt(s.figures.get('tokens'))} | {fmt(sae.get('steady_tokens_per_s'))} "
            f"| {fmt(s.figures.get('tokens_per_s'))} | {fmt(sae.get('fvu'), '.4f')} | {fmt(in_sweep, '.4f')} |"
        )
    lines += ["", "steady: the median of the trainer's own 50-step windows after the first (metrics.jsonl);"]
    lines += ["in fit-sweep: the same architecture's final train FVU in the one-pass sweep.", ""]
    lines += ["## Evaluate (the fit-sweep run, held-out split, with the model)", ""]
    lines += ["| SAE | FVU | L0 | dead | CE recovered | delta CE | KL |", "|---|---|---|---|---|---|---|"]
    for name, m in by["evaluate"].figures.get("saes", {}).items():
        vals = " | ".join(
            fmt(m[k], ".4f") for k in ("fvu", "l0", "dead_fraction", "ce_loss_recovered", "delta_ce", "kl")
        )
        lines.append(f"| {name} | {vals} |")
    lines += ["", f"Evaluate wall time: {fmt(by['evaluate'].wall_s, '.1f')} s.", ""]
    for s in stages:
        if s.status == "FAIL":
            lines += [f"## {s.name} failed: {s.note}", "", "```", shown(s.command), s.stderr_tail, "```", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: prove the script runs (CPU: a few minutes)")
    ap.add_argument("--device", default=os.environ.get("OSAE_GPU_CHECK_DEVICE", "cuda"), help="cuda (default) or cpu")
    ap.add_argument("--autocast", default=os.environ.get("OSAE_GPU_CHECK_AUTOCAST"), help="default: bf16, cpu none")
    ap.add_argument("--out-dir", default=os.environ.get("OUT") or ".", help="where gpu_check.md/.json/.log go")
    ap.add_argument("--work", help="scratch directory for stores and runs (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--budget-s", type=float, help="time for the whole check (default: 270 s, quick 600 s)")
    args = ap.parse_args()
    z = QUICK if args.quick else FULL
    autocast = args.autocast or ("none" if args.device == "cpu" else "bf16")
    work = Path(args.work or tempfile.mkdtemp(prefix="osae-gpu-check-"))
    if args.work and work.exists() and any(work.iterdir()):
        print(
            f"gpu_check: --work {work} is not empty; give a new directory (harvest would reuse its stores)",
            file=sys.stderr,
        )
        return 2
    work.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    stages = plan(z, args.device, autocast, work)
    info = execute(stages, work, args.device, args.budget_s or z.budget_s)
    smi = (
        subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
        if shutil.which("nvidia-smi")
        else ""
    )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": socket.gethostname(),
        "mode": "quick" if args.quick else "full",
        "device": args.device,
        "autocast": autocast,
        "nvidia_smi": smi.replace("\n", "; "),
        "wall_s": time.monotonic() - t0,
        "sizes": asdict(z),
        "work": str(work),
    }
    (out_dir / "gpu_check.md").write_text(report(stages, info, meta) + "\n")
    public = [{k: v for k, v in asdict(s).items() if k != "stdout"} for s in stages]
    (out_dir / "gpu_check.json").write_text(json.dumps({"meta": meta, "env": info, "stages": public}, indent=1) + "\n")
    with open(out_dir / "gpu_check.log", "w") as log:
        for s in stages:
            log.write(f"== {s.name}: {s.status} {s.note}\n$ {shown(s.command)}\n")
            err = work / "logs" / f"{s.name}.err"
            if err.exists():
                log.write("\n".join(err.read_text(errors="replace").splitlines()[-200:]) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    failed = [s.name for s in stages if s.status in ("FAIL", "not run")]
    print(
        f"gpu_check: {'FAIL: ' + ', '.join(failed) if failed else 'PASS'}; table in {out_dir / 'gpu_check.md'}",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
