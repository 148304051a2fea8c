"""One self-contained HTML page of latents in index order: firing rate, top activations, highlighted contexts.

No external assets (the page is opened from disk or mailed around). A short script adds the filter box and
the "showing N of M latents" line; without JavaScript every latent is still shown.
"""

from __future__ import annotations

import html
from pathlib import Path

from osae.errors import UsageError
from osae.evaluate.top_activations import HIST_LO, LatentSummary

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
header p { margin: .2em 0; color: #555; }
.controls { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ddd; }
section.latent { border-bottom: 1px solid #eee; padding: .6em 0; }
section.latent h2 { font-size: 1.05em; margin: 0 0 .2em; }
section.latent .stats { color: #555; font-size: .9em; }
section.dead h2 { color: #999; }
ol.examples { margin: .3em 0; padding-left: 2.2em; }
ol.examples li { font-family: ui-monospace, monospace; white-space: pre-wrap; margin: .15em 0; }
span.tok { border-radius: 2px; }
span.tok.focus { outline: 1.5px solid #c0392b; }
#summary { margin-left: 1.5em; color: #555; }
span.value { color: #888; font-family: system-ui, sans-serif; font-size: .85em; margin-right: .6em; }
.row { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; }
svg.hist text { font-size: 9px; fill: #555; }
h3 { font-size: .9em; margin: .4em 0 0; color: #444; font-weight: 600; }
.logits { font-size: .85em; }
.logits code { background: #eef6ee; margin-right: .3em; }
.logits .down code { background: #f8ecec; }
"""

SCRIPT = """
(function () {
  const sections = Array.from(document.querySelectorAll('section.latent'));
  const summary = document.getElementById('summary');
  const box = document.getElementById('filter');
  const hideDead = document.getElementById('hide-dead');
  function apply() {
    const q = box.value.trim();
    let lo = -Infinity, hi = Infinity;
    const m = q.match(/^(\\d+)\\s*(?:[-:]\\s*(\\d+))?$/);
    if (m) { lo = +m[1]; hi = m[2] === undefined ? lo : +m[2]; }
    let shown = 0;
    for (const s of sections) {
      const i = +s.dataset.index;
      const visible = i >= lo && i <= hi && !(hideDead.checked && s.classList.contains('dead'));
      s.hidden = !visible;
      if (visible) shown++;
    }
    summary.textContent = 'showing ' + shown + ' of ' + sections.length + ' latents';
  }
  box.addEventListener('input', apply);
  hideDead.addEventListener('change', apply);
  apply();
})();
"""


def token_texts(tokenizer, ids: set[int]) -> dict[int, str]:
    """Readable text of each token id (byte-level markers decoded); `<id>` when there is no tokenizer."""
    if tokenizer is None:
        return {i: f"<{i}>" for i in ids}
    return {i: tokenizer.decode([i]) for i in ids}


def _shade(value: float | None, peak: float) -> str:
    if value is None or value <= 0 or peak <= 0:
        return ""
    alpha = min(1.0, value / peak)
    return f' style="background: rgba(255, 140, 0, {alpha:.2f})"'


def _token_span(text: str, value: float | None, peak: float, focus: bool) -> str:
    shown = html.escape(text.replace("\n", "\u21b5").replace("\t", "\u2192"))  # one line per example
    title = "no stored activation (BOS, or outside the rows read)" if value is None else f"{value:.3f}"
    cls = "tok focus" if focus else "tok"
    return f'<span class="{cls}" title="{title}"{_shade(value, peak)}>{shown}</span>'


def histogram_svg(counts: list[int], width: int = 260, height: int = 70) -> str:
    """The latent's firings per half-octave of activation, as an inline SVG bar chart with labelled axes."""
    used = [i for i, c in enumerate(counts) if c]
    if not used:
        return ""
    first, last = used[0], used[-1]
    shown = counts[first : last + 1]
    peak = max(shown)
    plot_w, plot_h, left, bottom = width - 30, height - 26, 28, height - 16
    bar_w = plot_w / len(shown)
    bars = "".join(
        f'<rect x="{left + i * bar_w:.1f}" y="{bottom - plot_h * c / peak:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
        f'height="{plot_h * c / peak:.1f}" fill="#e08a1e"><title>{_edge(first + i)}-{_edge(first + i + 1)}: '
        f"{c:,}</title></rect>"
        for i, c in enumerate(shown)
    )
    return (
        f'<svg class="hist" width="{width}" height="{height}" role="img" aria-label="activation histogram">{bars}'
        f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#999"/>'
        f'<text x="{left}" y="{height - 4}">{_edge(first)}</text>'
        f'<text x="{left + plot_w}" y="{height - 4}" text-anchor="end">{_edge(last + 1)}</text>'
        f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">activation (log scale)</text>'
        f'<text x="2" y="{bottom - plot_h / 2}" transform="rotate(-90 8 {bottom - plot_h / 2})">firings</text>'
        f'<text x="{left + 2}" y="9">{peak:,}</text></svg>'
    )


def _edge(i: int) -> str:
    return f"{2 ** ((HIST_LO + i) / 2):.3g}"


def _examples_list(lat: LatentSummary, examples, texts: dict[int, str]) -> str:
    items = []
    for ex in examples:
        spans = "".join(
            _token_span(texts.get(t, f"<{t}>"), a, lat.max_value, i == ex.focus)
            for i, (t, a) in enumerate(zip(ex.tokens, ex.activations))
        )
        items.append(f'<li data-row="{ex.row}"><span class="value">{ex.value:.3f}</span>{spans}</li>')
    return f'<ol class="examples">{"".join(items)}</ol>' if items else ""


def _logits_html(promoted: list[str], suppressed: list[str]) -> str:
    def codes(tokens):
        return "".join(f"<code>{html.escape(t)}</code>" for t in tokens)

    return (
        f'<div class="logits"><div class="up">promotes {codes(promoted)}</div>'
        f'<div class="down">suppresses {codes(suppressed)}</div></div>'
    )


def render_page(
    latents: list[LatentSummary],
    texts: dict[int, str],
    *,
    title: str,
    facts: dict[str, str],
    logits: dict[int, tuple[list[str], list[str]]] | None = None,
    matches: dict[int, tuple[int, float]] | None = None,
    match_name: str = "",
) -> str:
    """`logits`: latent -> (promoted, suppressed) output tokens; `matches`: latent -> (partner, cosine)."""
    head = "".join(f"<p><b>{html.escape(k)}</b>: {html.escape(str(v))}</p>" for k, v in facts.items())
    body = []
    for lat in latents:
        dead = lat.fired == 0
        stats = (
            f"never fired in {lat.scanned:,} tokens"
            if dead
            else f"fires on {100 * lat.rate:.3g}% of {lat.scanned:,} tokens &middot; max {lat.max_value:.3f}"
        )
        if matches and lat.index in matches:
            partner, cos = matches[lat.index]
            stats += f" &middot; matched to latent {partner} of {html.escape(match_name)} (cosine {cos:.3f})"
        side = _logits_html(*logits[lat.index]) if logits and lat.index in logits else ""
        parts = [f'<div class="row">{histogram_svg(lat.histogram)}{side}</div>' if not dead else ""]
        if lat.examples:
            parts.append("<h3>top activations</h3>" + _examples_list(lat, lat.examples, texts))
        for label, shown in lat.bands:
            parts.append(f"<h3>{html.escape(label)}</h3>" + _examples_list(lat, shown, texts))
        body.append(
            f'<section class="latent{" dead" if dead else ""}" id="latent-{lat.index}" data-index="{lat.index}" '
            f'data-rate="{lat.rate:.6g}"><h2>Latent {lat.index}</h2>'
            f'<div class="stats">{stats}</div>{"".join(parts)}</section>'
        )
    controls = (
        '<div class="controls"><label>Latents <input id="filter" placeholder="e.g. 12 or 0-63" size="12"></label> '
        '<label><input type="checkbox" id="hide-dead"> hide dead</label> <span id="summary"></span></div>'
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><header><h1>{html.escape(title)}</h1>{head}</header>{controls}"
        f"<main>{''.join(body)}</main><script>{SCRIPT}</script></body></html>\n"
    )


def write_page(
    path: Path, latents: list[LatentSummary], tokenizer, *, title: str, facts: dict[str, str], **extra
) -> Path:
    """`extra`: render_page's logits, matches and match_name."""
    shown = [ex for lat in latents for ex in [*lat.examples, *(e for _, band in lat.bands for e in band)]]
    ids = {t for ex in shown for t in ex.tokens}
    page = render_page(latents, token_texts(tokenizer, ids), title=title, facts=facts, **extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)  # a crash never leaves a half-written page in place of a good one
    return path


def inspect_checkpoint(
    checkpoint: str,
    store_url: str,
    out: Path,
    *,
    latents: str = "0:128",
    max_tokens: int = 200_000,
    top: int = 10,
    before: int = 12,
    after: int = 4,
    split: str = "eval",
    tokenizer: str | None = None,
    progress: bool = True,
    format: str | None = None,
    use_model: bool = True,
    match_with: str | None = None,
) -> dict:
    """Write the latent page of one checkpoint (any format osae.foreign reads); returns what was shown.
    `use_model`: the output tokens each decoder direction promotes and suppresses, through the unembedding of
    the store's model (when it can be loaded); `match_with`: another checkpoint whose Hungarian-matched
    latent (and cosine) each latent shows."""
    from osae.evaluate.batches import checkpoint_normalizer
    from osae.evaluate.consistency import match
    from osae.evaluate.run import require_matching_store
    from osae.evaluate.top_activations import top_activations
    from osae.foreign import load_any
    from osae.harvest.models import load_tokenizer
    from osae.progress import progress as progress_bar
    from osae.store import ActivationStore

    store = ActivationStore(store_url)
    sae, cfg = load_any(checkpoint, format=format, store=store)
    require_matching_store(checkpoint, sae, cfg, store)
    hook = cfg["hook"]
    chosen = parse_latent_range(latents, sae.cfg.d_sae)
    model = store.meta.get("provenance", {}).get("model") or {}
    source = tokenizer or model.get("source")
    tok = load_tokenizer(source) if source else None
    with progress_bar(max_tokens, "inspect", "tok", enabled=progress, unit_scale=True) as bar:
        found = top_activations(
            sae,
            checkpoint_normalizer(cfg),
            store,
            hook,
            latents=chosen,
            max_tokens=max_tokens,
            top=top,
            before=before,
            after=after,
            split=split,
            progress=bar.update,
        )
    facts = {
        "checkpoint": str(checkpoint),
        "architecture": f"{cfg['architecture']}, {sae.cfg.d_sae} latents",
        "store": store.loc.display,
        "hook": hook,
        "model": model.get("name") or "unknown",
        "tokens scanned": f"{found[0].scanned:,} of the {split} split",
        "latents shown": f"{chosen.start}..{chosen.stop - 1} in index order",
    }
    if tok is None:
        facts["note"] = "no tokenizer recorded in the store: tokens are shown as ids"
    extra = {}
    if use_model and source:
        extra["logits"] = output_tokens(source, sae, checkpoint_normalizer(cfg), chosen, tok, facts)
    if match_with:
        other, other_cfg = load_any(match_with, store=store)
        require_matching_store(match_with, other, other_cfg, store)
        m = match(sae.W_dec, other.W_dec)
        extra["matches"] = {int(r): (int(c), float(cos)) for r, c, cos in zip(m.rows, m.cols, m.cosines)}
        extra["match_name"] = Path(match_with).name
        facts["matched with"] = f"{match_with} (Hungarian matching of decoder directions, Stab {m.stab:.3f})"
    write_page(out, found, tok, title=f"Latents of {Path(checkpoint).name}", facts=facts, **extra)
    return {
        "out": str(out),
        "latents": len(found),
        "dead": sum(lat.fired == 0 for lat in found),
        "scanned": found[0].scanned,
    }


TOP_TOKENS = 8


def output_tokens(source: str, sae, normalizer, latents: range, tokenizer, facts: dict) -> dict:
    """latent -> (promoted, suppressed): the output tokens whose logits the decoder direction, in the model's
    units, raises and lowers most through the unembedding (no final norm). {} (with a note) when the model
    cannot be loaded."""
    import torch

    from osae.errors import OsaeError
    from osae.harvest.models import load_model

    try:
        lm = load_model(source, device="cpu", dtype="float32")
    except (OsaeError, OSError) as exc:
        facts["output tokens"] = f"not shown: the model could not be loaded ({str(exc).splitlines()[0]})"
        return {}
    W_U = lm.model.get_output_embeddings().weight.detach().float()  # (vocab, d_model)
    with torch.no_grad():
        atoms = sae.W_dec.detach().float()[latents.start : latents.stop]
        # The normalisation is affine: a direction maps through its linear part only.
        directions = normalizer.inverse(atoms) - normalizer.inverse(torch.zeros_like(atoms[:1]))
        logits = directions @ W_U.T
        up = logits.topk(TOP_TOKENS, dim=1).indices.tolist()
        down = (-logits).topk(TOP_TOKENS, dim=1).indices.tolist()
    texts = token_texts(tokenizer or lm.tokenizer, {t for row in up + down for t in row})
    facts["output tokens"] = f"decoder direction through {lm.name}'s unembedding (no final norm)"
    return {j: ([texts[t] for t in u], [texts[t] for t in d]) for j, u, d in zip(latents, up, down)}


def parse_latent_range(text: str, d_sae: int) -> range:
    """'A:B' (B exclusive, either side may be empty) or a single index 'A'."""
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            r = range(int(a) if a else 0, min(int(b), d_sae) if b else d_sae)
        else:
            r = range(int(text), int(text) + 1)
    except ValueError:
        raise UsageError(f"--latents must look like 0:128 or 7; got {text!r}") from None
    if not 0 <= r.start < r.stop <= d_sae:
        raise UsageError(f"--latents {text} is outside the SAE's {d_sae} latents")
    return r
