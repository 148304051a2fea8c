"""Tiny randomly initialised transformers models of real architectures, saved like hub models."""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_FILES = [
    "json/decoder.py",
    "textwrap.py",
    "string.py",
    "bisect.py",
    "heapq.py",
    "shlex.py",
    "fnmatch.py",
    "glob.py",
]


def tiny_tokenizer(vocab: int = 300):
    import sysconfig

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [(root / f).read_text() for f in TEXT_FILES]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_config(kind: str, vocab: int):
    from transformers import Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig

    if kind == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            rotary_pct=0.25,
            bos_token_id=0,
            eos_token_id=0,
        )
    if kind == "gemma2":
        return Gemma2Config(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            sliding_window=16,
        )
    if kind == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=256, bos_token_id=0, eos_token_id=0
        )
    if kind == "llama":
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    raise ValueError(kind)


def save_tiny_model(kind: str, path: Path, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, len(tok)))
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def text_dir(path: Path, n_files: int = 8) -> Path:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    path.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(TEXT_FILES[:n_files]):
        (path / f"{i:02d}.txt").write_text((root / f).read_text())
    return path
