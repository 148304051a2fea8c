"""Typed SAE specs: settings parsed into the architecture's config at the edge, names and export kinds from
the registry, run.json round trips (old and new form)."""

import json
from dataclasses import dataclass, fields

import pytest

from osae.field_docs import field_docs
from osae.train.arch_settings import parse_arch_config, settings
from osae.train.architectures import ARCHITECTURES
from osae.train.architectures.matryoshka import MatryoshkaConfig
from osae.train.architectures.ordered import OrderedConfig
from osae.train.config import SAESpec, TrainConfig, load_sweep


@dataclass
class _Documented:
    a: int = 1
    """First."""
    b: str = "x"
    c: float = 0.5
    """Third,
    over two lines."""


@dataclass
class _Child(_Documented):
    a: int = 2
    """Redeclared."""
    d: int = 0
    """Own."""


def test_field_docs_reads_the_string_under_each_field_and_inherits():
    assert field_docs(_Documented) == {"a": "First.", "c": "Third, over two lines."}
    assert field_docs(_Child) == {"a": "Redeclared.", "c": "Third, over two lines.", "d": "Own."}


def test_every_architecture_field_is_a_documented_setting():
    by_name = {s.name: s for s in settings()}
    for arch, (cfg_cls, _) in ARCHITECTURES.items():
        docs = field_docs(cfg_cls)
        for name in (f.name for f in fields(cfg_cls) if f.name != "d_in"):
            assert docs.get(name), f"{cfg_cls.__name__}.{name} has no docstring"
            assert arch in by_name[name].archs
    assert by_name["d_sae"].option == "--dict-size" and by_name["k_init"].option == "--k-init"
    assert by_name["l1_coef"].archs == ["relu", "hybridorder"]
    assert "relu 5" in by_name["l1_coef"].help() and "hybridorder 0.04" in by_name["l1_coef"].help()
    assert "ignored by relu, hybridorder" in by_name["k"].help()


def test_settings_parse_into_the_architecture_config_with_d_in_unbound():
    cfg = parse_arch_config("osae", {"d_sae": 64, "k": 4, "prefix_law": "zipf", "k_init": 16})
    assert isinstance(cfg, OrderedConfig) and cfg.d_in is None and cfg.prefix_alpha == 1.2
    assert cfg.bind(16).d_in == 16 and cfg.bind(16).k_init == 16
    with pytest.raises(ValueError, match="d_in must be positive"):
        cfg.bind(0)


@pytest.mark.parametrize(
    "arch, values, pattern",
    [
        ("topk", {"kk": 3}, r"unknown topk setting 'kk'; valid: d_sae, k, aux_k_coef, aux_k, k_init, k_warmup_steps$"),
        ("relu", {"prefix_law": "zipf"}, r"unknown relu setting 'prefix_law'; valid: d_sae, k, .*l1_coef"),
        ("topk", {"k": "3"}, r"topk: k must be an integer; got '3'"),
        ("topk", {"d_sae": 8, "k": 9}, r"topk: k=9 is larger than the dictionary size 8"),
        ("osae", {"prefix_law": "lognormal"}, r"osae: prefix_law must be one of"),
        ("matryoshka", {"d_sae": 64, "widths": [8, 32]}, r"matryoshka: widths must be increasing and end at d_sae=64"),
        ("matryoshka-random", {"selection": "tok"}, r"selection must be batch or token"),
        ("matryoshka", {"d_sae": 64, "widths": [32, 64], "level_weights": [1.0]}, r"one weight per width"),
    ],
)
def test_bad_settings_are_one_line_naming_the_problem(arch, values, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        SAESpec(arch, 0, values)
    assert "\n" not in str(info.value)


def test_names_and_lr_come_from_the_typed_config():
    assert SAESpec("topk", 3, {"d_sae": 32, "k": 3}).name == "topk-K32-k3-s3"
    assert SAESpec("osae", 0).name == "osae-K4096-k32-s0"  # the defaults, as before
    assert SAESpec("relu", 1, {"d_sae": 24, "k": 5}).name == "relu-K24-kNA-s1"
    assert SAESpec("hybridorder", 0, {"d_sae": 64}).name == "hybridorder-K64-kNA-s0"
    big = SAESpec("topk", 0, {"d_sae": 2**14})
    assert big.resolved_lr("adam", 4096) == pytest.approx(5e-3 / 4**0.75)  # 5e-3 (batch / K)^0.75
    assert big.resolved_lr("adam", 2**14) == pytest.approx(5e-3)  # batch = K
    assert big.resolved_lr("adam-lazy", 4096) == pytest.approx(6e-3 / 4**0.87)  # 6e-3 (batch / K)^0.87
    assert big.resolved_lr("adam-lazy", 4096) == pytest.approx(1.8e-3, rel=0.01)  # K = 16384 kept its rate
    assert big.resolved_lr("adam-lazy", 2**14) == pytest.approx(6e-3)
    assert big.resolved_lr("signum-sf", 1024) == pytest.approx(5e-3)  # sign descent: no batch factor


def test_a_spec_records_every_setting_and_builds_its_config_at_the_store_width():
    spec = SAESpec("matryoshka", 0, {"d_sae": 64, "k": 4})
    assert spec.config["widths"] == [4, 8, 16, 32, 64] and spec.config["threshold_window"] is None
    assert "d_in" not in spec.config
    built = spec.build_config(16)
    assert isinstance(built, MatryoshkaConfig) and built.d_in == 16 and built.k == 4
    assert "k" not in SAESpec("relu", 0, {"d_sae": 24}).config  # relu ignores k: not recorded


def test_run_config_round_trips_and_old_run_json_still_loads():
    cfg = TrainConfig(
        store="s",
        out="o",
        saes=[SAESpec("osae", 1, {"d_sae": 32, "k": 3}, lr=1e-3), SAESpec("relu", 0, {"d_sae": 24, "l1_coef": 2.5})],
    )
    d = json.loads(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_dict(d) == cfg and TrainConfig.from_dict(d, strict=True) == cfg
    # The previous version wrote only the given settings; a removed setting is ignored when read back.
    old = {
        **d,
        "saes": [
            {"arch": "osae", "seed": 1, "config": {"d_sae": 32, "k": 3, "retired": 1}, "lr": 1e-3},
            {"arch": "relu", "seed": 0, "config": {"d_sae": 24, "l1_coef": 2.5}, "lr": None},
        ],
    }
    assert TrainConfig.from_dict(old) == cfg
    with pytest.raises(ValueError, match="unknown osae setting 'retired'"):
        TrainConfig.from_dict(old, strict=True)


def test_a_given_run_config_is_checked_strictly():
    d = TrainConfig(store="s", out="o", saes=[SAESpec("topk", 0, {"d_sae": 32, "k": 3})]).to_dict()
    with pytest.raises(ValueError, match="unknown run setting 'tokenz'"):
        TrainConfig.from_dict({**d, "tokenz": 5}, strict=True)
    with pytest.raises(ValueError, match="run setting 'tokens' must be an integer; got 'many'"):
        TrainConfig.from_dict({**d, "tokens": "many"}, strict=True)
    with pytest.raises(ValueError, match="unknown SAE entry setting 'sead'"):
        TrainConfig.from_dict({**d, "saes": [{"arch": "topk", "sead": 1}]}, strict=True)
    assert TrainConfig.from_dict({**d, "tokens": 1e7}, strict=True).tokens == 10_000_000


def test_check_width_names_the_sae():
    cfg = TrainConfig(store="s", out="o", saes=[SAESpec("topk", 0, {"d_sae": 32, "k": 3})])
    cfg.check_width(16)
    with pytest.raises(ValueError, match="topk-K32-k3-s0: d_in must be positive"):
        cfg.check_width(0)


def test_a_yaml_sweep_with_a_misspelt_key_names_file_entry_and_key(tmp_path):
    good = tmp_path / "sweep.yaml"
    good.write_text("- {arch: topk, seeds: [0, 1], d_sae: 32, k: 3}\n- {arch: relu, d_sae: 24, lr: 0.001}\n")
    assert [s.name for s in load_sweep(good)] == ["topk-K32-k3-s0", "topk-K32-k3-s1", "relu-K24-kNA-s0"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"arch": "topk", "d_sae": 32}, {"arch": "topk", "d_sae": 32, "kk": 3}]))
    with pytest.raises(ValueError, match=r"bad.json: entry 2: unknown topk setting 'kk'; valid: d_sae, k"):
        load_sweep(bad)


def test_a_dead_window_per_sae_beats_the_run_s_and_must_fit_in_the_run(tmp_path):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps([{"arch": "topk", "d_sae": 32, "k": 3, "seeds": [0, 1], "dead_window_tokens": 512}]))
    specs = load_sweep(sweep) + [SAESpec("relu", 0, {"d_sae": 32})]
    cfg = TrainConfig(store="s", out="o", saes=specs, tokens=4096, batch_size=256, dead_window_tokens=1024)
    assert [cfg.dead_window_of(s) for s in cfg.saes] == [512, 512, 1024]
    assert TrainConfig.from_dict(cfg.to_dict()).saes == cfg.saes  # run.json keeps it
    with pytest.raises(ValueError, match=r"topk-K32-k32-s0: dead_window_tokens 8192 is longer than the run"):
        TrainConfig(store="s", out="o", saes=[SAESpec("topk", 0, {"d_sae": 32}, None, 8192)], tokens=4096)


@pytest.mark.parametrize(
    "arch, values, kind",
    [
        ("topk", {}, "topk"),
        ("osae", {}, "topk"),
        ("batchtopk", {}, "jumprelu"),
        ("matryoshka", {}, "jumprelu"),
        ("matryoshka", {"selection": "token"}, "topk"),
        ("matryoshka-random", {"selection": "token"}, "topk"),
        ("matryoshka-random", {}, "jumprelu"),
        ("relu", {}, "standard"),
        ("hybridorder", {}, "standard"),
    ],
)
def test_the_saelens_kind_is_the_config_class_s(arch, values, kind):
    assert parse_arch_config(arch, values).saelens_architecture() == kind


def test_auto_autocast_uses_bf16_on_gpus_and_on_bf16_cpus_for_large_saes():
    from osae.train.config import SAESpec, TrainConfig, cpu_has_fast_bf16

    def cfg(K, autocast="auto"):
        return TrainConfig(store="s", out="o", saes=[SAESpec("topk", 0, {"d_sae": K, "k": 32})], autocast=autocast)

    assert cfg(4096).uses_bf16("cpu", 256) == cpu_has_fast_bf16()
    assert not cfg(1024).uses_bf16("cpu", 256)  # measured: too small to pay
    assert cfg(1024).uses_bf16("cuda", 256) and cfg(1024, "bf16").uses_bf16("cpu", 16)
    assert not cfg(16384, "none").uses_bf16("cuda", 256)
