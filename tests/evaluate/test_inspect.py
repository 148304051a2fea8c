"""`osae inspect`: top activations checked against a brute-force scan, and the page opened in real Chromium."""

import html
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from osae.harvest import HarvestConfig, harvest
from osae.harvest.models import EMBEDDED_DIR
from osae.store import ActivationStore, iter_split_rows
from osae.train.checkpoint import save_frozen

from .helpers import identity_sae

pytestmark = pytest.mark.skipif(not (EMBEDDED_DIR / "config.json").exists(), reason="the embedded model is not built")
HOOK = "blocks.1.hook_resid_post"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PERM = np.random.default_rng(0).permutation(512)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    harvest(
        HarvestConfig(
            out=str(root / "s.zarr"), layers=[1], tokens=6000, context_size=32, store_dtype="float32", eval_fraction=0.3
        ),
        progress=False,
    )
    # Latent i of the identity SAE is exactly max(x_i, 0): its top activations are known from the rows.
    save_frozen(identity_sae(256), root / "ident", {"hook": HOOK, "normalization": {"kind": "none"}})
    shuffled = identity_sae(256)
    shuffled.permute_(torch.from_numpy(PERM))  # the same atoms in another order: the match must undo it
    save_frozen(shuffled, root / "shuffled", {"hook": HOOK, "normalization": {"kind": "none"}})
    proc = _osae(
        "inspect",
        root / "ident",
        "--store",
        root / "s.zarr",
        "--out",
        root / "page.html",
        "--latents",
        "0:8",
        "--top",
        "3",
        "--before",
        "5",
        "--after",
        "2",
        "--match",
        root / "shuffled",
    )
    assert proc.returncode == 0, proc.stderr
    return root, (root / "page.html").read_text()


def _osae(*args):
    return subprocess.run([sys.executable, "-m", "osae", *map(str, args)], capture_output=True, text=True, timeout=300)


def _sections(html_text):
    return re.findall(r'<section class="latent[^"]*" id="latent-(\d+)".*?</section>', html_text, flags=re.DOTALL)


def test_rates_and_top_examples_match_a_brute_force_scan(page):
    root, text = page
    store = ActivationStore(root / "s.zarr")
    starts, x = zip(*[(s, r) for s, r in iter_split_rows(store, HOOK, "eval")])
    rows = np.concatenate([np.arange(s, s + len(r)) for s, r in zip(starts, x)])
    x = np.concatenate(x)
    tokens = store.read_rows("tokens", 0, store.n_tokens)
    assert _sections(text) == [str(i) for i in range(8)]
    for i in range(8):
        section = re.search(rf'id="latent-{i}".*?</section>', text, flags=re.DOTALL).group(0)
        rate = float(re.search(r'data-rate="([^"]+)"', section).group(1))
        assert rate == pytest.approx((x[:, i] > 0).mean(), rel=1e-4)
        best = rows[np.argsort(-x[:, i], kind="stable")[:3]]
        top_list = section.split("<h3>top activations</h3>")[1].split("</ol>")[0]
        shown = [int(r) for r in re.findall(r'<li data-row="(\d+)"', top_list)]
        assert shown == best.tolist()
        focus = re.search(
            r'<li data-row="\d+"><span class="value">([\d.]+)</span>.*?class="tok focus" title="([\d.]+)"',
            section,
            flags=re.DOTALL,
        )
        assert float(focus.group(1)) == pytest.approx(x[:, i].max(), abs=1e-3)
        assert float(focus.group(2)) == pytest.approx(x[:, i].max(), abs=1e-3)
    assert int(tokens[best[0]]) >= 0  # the focus row holds a real token


def _section(text, i):
    return re.search(rf'id="latent-{i}".*?</section>', text, flags=re.DOTALL).group(0)


def test_histograms_quantile_examples_output_tokens_and_matches_are_right(page):
    from osae.evaluate.top_activations import HIST_BINS, HIST_LO
    from osae.harvest.models import load_model

    root, text = page
    store = ActivationStore(root / "s.zarr")
    x = np.concatenate([r for _, r in iter_split_rows(store, HOOK, "eval")])
    W_U = load_model(str(EMBEDDED_DIR), device="cpu", dtype="float32").model.get_output_embeddings().weight
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(EMBEDDED_DIR)
    for i in range(8):
        section, v = _section(text, i), x[:, i][x[:, i] > 0]
        # The histogram's bars: firings per half-octave, as a direct count gives.
        bins = np.clip(np.floor(np.log2(v) * 2).astype(int), HIST_LO, HIST_LO + HIST_BINS - 1) - HIST_LO
        expected = np.bincount(bins, minlength=HIST_BINS)
        counts = [int(c.replace(",", "")) for c in re.findall(r"<title>[^<]*: ([\d,]+)</title>", section)]
        assert counts == expected[bins.min() : bins.max() + 1].tolist()
        assert "activation (log scale)" in section and ">firings<" in section
        # Quantile bands: lowest first, each example's value an activation of this latent.
        bands = re.findall(r"<h3>quantiles ([\d.]+)-([\d.]+) of its activations</h3>(.*?)</ol>", section, re.DOTALL)
        assert [b[:2] for b in bands] == [("0.00", "0.25"), ("0.25", "0.50"), ("0.50", "0.75"), ("0.75", "0.95")]
        values = [[float(t) for t in re.findall(r'class="value">([\d.]+)<', b[2])] for b in bands]
        assert all(vals for vals in values) and max(values[0]) <= min(values[-1])
        assert all(np.isclose(v, val, atol=1e-3).any() for vals in values for val in vals)
        # Output tokens: the identity SAE's latent i is the unit vector e_i, so its logits are W_U[:, i].
        up = re.search(r'class="up">promotes (.*?)</div>', section, re.DOTALL).group(1)
        shown = re.findall(r"<code>(.*?)</code>", up, re.DOTALL)
        order = torch.argsort(W_U[:, i], descending=True).tolist()
        # near-equal logits may swap places between two matmuls: the first is certain, the rest are among the top
        assert len(shown) == 8 and shown[0] == html.escape(tok.decode([order[0]]))
        assert set(shown) <= {html.escape(tok.decode([t])) for t in order[:12]}
        # The match: latent i of the shuffled copy's order is where PERM put atom i.
        partner, cos = re.search(r"matched to latent (\d+) of shuffled \(cosine ([\d.]+)\)", section).groups()
        assert int(partner) == int(np.argsort(PERM)[i]) and float(cos) == pytest.approx(1.0)


def test_the_page_renders_in_headless_chromium_with_its_filter(page, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("OSAE_REQUIRE_BROWSER"):
            pytest.fail("OSAE_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (CI installs it)")
    root, _ = page
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = (root / "page.html").as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The summary line is written by the page's script: its presence shows the script ran in the browser.
    assert re.search(r'id="summary">showing 8 of 8 latents<', dom.stdout), dom.stdout[:2000]
    shot = tmp_path / "page.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,900", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank


def test_inspect_refuses_a_store_without_tokens(tmp_path):
    from osae.synthetic import ToyConfig, write_toy_store

    write_toy_store(tmp_path / "toy.zarr", ToyConfig(d=16, n_atoms=32, m=3, n=2000, n_eval=500))
    save_frozen(identity_sae(16), tmp_path / "ident", {"hook": "toy", "normalization": {"kind": "none"}})
    proc = _osae("inspect", tmp_path / "ident", "--store", tmp_path / "toy.zarr", "--out", tmp_path / "p.html")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "holds no token ids" in proc.stderr and not (tmp_path / "p.html").exists()
