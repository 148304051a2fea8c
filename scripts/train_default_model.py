"""Train osae's embedded default model: a small GPT-NeoX (Pythia's architecture) and its byte-level BPE
tokenizer, on the source files of the running Python's standard library. Deterministic on CPU for a
given seed and thread count; the committed model card records both.

    python scripts/train_default_model.py --out osae/models/stdlib-neox          # the committed model
    python scripts/train_default_model.py --probe                               # tokens/s only
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from osae.harvest.sources import stdlib_files  # noqa: E402

CTX = 128
EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def token_stream(tok, texts: list[str]) -> np.ndarray:
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def windows(stream: np.ndarray, bos: int) -> np.ndarray:
    """Packed windows of CTX tokens: BOS, then CTX - 1 consecutive tokens of the stream."""
    n = len(stream) // (CTX - 1)
    body = stream[: n * (CTX - 1)].reshape(n, CTX - 1)
    return np.concatenate([np.full((n, 1), bos, np.int64), body], axis=1)


def build_model(vocab: int, bos: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=1024,
        rotary_pct=0.25,
        max_position_embeddings=2048,
        bos_token_id=bos,
        eos_token_id=bos,
        tie_word_embeddings=False,
        use_parallel_residual=True,
    )
    return GPTNeoXForCausalLM(cfg)


@torch.no_grad()
def eval_loss(model, data: np.ndarray, batch: int = 64) -> float:
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(data), batch):
        x = torch.from_numpy(data[i : i + batch])
        logits = model(input_ids=x).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        tot += loss.item()
        n += x[:, 1:].numel()
    model.train()
    return tot / n


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab: int) -> float:
    counts = np.bincount(train[:, 1:].reshape(-1), minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val[:, 1:].reshape(-1)].mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("osae/models/stdlib-neox"))
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=32, help="windows of 128 tokens per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe", action="store_true", help="time 20 steps and stop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()

    files = stdlib_files()
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    is_val = np.arange(len(files)) % 50 == 7  # every 50th file is held out
    train_texts = [t for t, v in zip(texts, is_val) if not v]
    val_texts = [t for t, v in zip(texts, is_val) if v]
    tok = train_tokenizer(train_texts, args.vocab)
    bos = tok.token_to_id(EOS)
    train = windows(token_stream(tok, train_texts), bos)
    val = windows(token_stream(tok, val_texts), bos)[:512]
    print(f"tokenizer {tok.get_vocab_size()} tokens; {len(train)} training windows, {len(val)} held out", flush=True)

    model = build_model(tok.get_vocab_size(), bos)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95)
    )
    warm = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    )
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(train))
    pos, epoch, log = 0, 0, []
    steps = 20 if args.probe else args.steps
    t0 = time.time()
    for step in range(steps):
        if pos + args.batch > len(order):
            epoch += 1
            order, pos = rng.permutation(len(train)), 0
        x = torch.from_numpy(train[order[pos : pos + args.batch]])
        pos += args.batch
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=x).logits[:, :-1]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            rate = (step + 1) * args.batch * CTX / (time.time() - t0)
            log.append({"step": step, "loss": loss.item(), "tokens_per_s": rate})
            print(f"step {step} loss {loss.item():.3f} {rate:.0f} tok/s", flush=True)
    if args.probe:
        return
    val_loss = eval_loss(model, val)
    uni = unigram_loss(train, val, tok.get_vocab_size())
    print(f"held-out loss {val_loss:.3f} nats/token; unigram baseline {uni:.3f}", flush=True)

    from transformers import PreTrainedTokenizerFast

    args.out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(args.out, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS).save_pretrained(args.out)
    report = {
        "parameters": n_params,
        "vocab": tok.get_vocab_size(),
        "context": CTX,
        "steps": steps,
        "tokens_seen": steps * args.batch * CTX,
        "epochs_started": epoch + 1,
        "training_windows": int(len(train)),
        "heldout_loss": val_loss,
        "unigram_loss": uni,
        "seed": args.seed,
        "threads": args.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "n_files": len(files),
        "heldout_files": int(is_val.sum()),
        "wall_s": time.time() - t_start,
        "log": log,
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=1))
    write_card(args.out)


def write_card(out: Path) -> None:
    """README.md (the model card) from training.json and the saved files."""
    r = json.loads((out / "training.json").read_text())
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 2**20
    card = f"""# osae-stdlib: the embedded default model

A small causal language model shipped inside osae so that harvest, fit and evaluate run offline, in tests
and on a new machine. It is a tool for checking the pipeline, not a research model.

| | |
|---|---|
| architecture | GPT-NeoX (Pythia's): 6 layers, hidden 256, 4 heads, MLP 1024, rotary fraction 0.25, parallel residual |
| parameters | {r["parameters"]:,} (weights stored in float16; {size:.1f} MiB with the tokenizer) |
| tokenizer | byte-level BPE, {r["vocab"]} tokens, `<|endoftext|>` (id 0) as BOS, EOS and padding |
| training text | the {r["n_files"]} `.py` files of the Python {r["python"]} standard library, every 50th file held out ({r["heldout_files"]} files) |
| training | {r["steps"]} steps of {r["tokens_seen"] // r["steps"]:,} tokens (windows of {r["context"]}), {r["tokens_seen"]:,} tokens seen, AdamW, bf16 autocast, seed {r["seed"]}, {r["threads"]} CPU thread(s), {r["wall_s"] / 60:.0f} min |
| held-out loss | **{r["heldout_loss"]:.3f}** nats/token on 512 held-out windows |
| unigram baseline | {r["unigram_loss"]:.3f} nats/token (add-one token frequencies of the training text) |

Reproduce: `python scripts/train_default_model.py --out osae/models/stdlib-neox --steps {r["steps"]} --threads {r["threads"]}`
(deterministic for a given seed, thread count and torch build; torch {r["torch"]} here).
"""
    (out / "README.md").write_text(card)


if __name__ == "__main__":
    main()
