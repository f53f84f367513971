"""The reproduction driver's tables: Markdown per claim (each only when its arms ran), with seeds and mean ± half-range, and one PNG plot per table.

Scores are main scores × 100 from the cached results; per-task-type columns are the suite's task-type
averages and `avg` is the mean of those (hybridembed.evaluation's overall average).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from hybridembed.evaluation.results import SuiteResults

TYPE_ORDER = ["sts", "pair_classification", "classification", "clustering", "reranking", "retrieval"]
TYPE_SHORT = {
    "sts": "STS",
    "pair_classification": "PairCls",
    "classification": "Cls",
    "clustering": "Clust",
    "reranking": "Rerank",
    "retrieval": "Retr",
    "avg": "avg",
}
MRL_DIMS = [768, 384, 256, 128, 64]
Results = dict[str, list[dict[str, Any]]]


def score(entry: dict[str, Any], task: str, dim: int) -> float | None:
    value = SuiteResults(entry["eval"]).score(task, dim)
    return None if value is None else 100 * value


def type_scores(entry: dict[str, Any], dim: int) -> dict[str, float]:
    results = SuiteResults(entry["eval"])
    found = {t: results.average(t, dim) for t in TYPE_ORDER} | {"avg": results.average(dim=dim)}
    return {t: 100 * value for t, value in found.items() if value is not None}


def mean_spread(values: list[float | None]) -> tuple[float | None, float | None]:
    """(mean, half-range) over seeds; (None, None) without values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (max(vals) - min(vals)) / 2


def fmt(v: float | None, spread: float | None = None) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if spread is None else f"{v:.2f} ± {spread:.2f}"


def md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _seeds(res: Results, arm: str) -> str:
    return ",".join(str(e["seed"]) for e in res.get(arm, [])) or "–"


def _rows_drawn(entry: dict[str, Any]) -> str:
    drawn = entry.get("rows_drawn") or {}
    return str(drawn.get("total", "–"))


def top_dim(entry: dict[str, Any]) -> int:
    """The largest dim an entry was scored at (384 for the base MiniLM and zh-noproj; a tiny test model has fewer)."""
    return SuiteResults(entry["eval"]).dims[0]


def present(res: Results, arms: list[str], keys: list[str]) -> list[str]:
    """The task types (and avg) any of these arms has a score for: a suite without reranking gets no Rerank column."""
    found = {k for a in arms for e in res.get(a, []) for d in SuiteResults(e["eval"]).dims for k in type_scores(e, d)}
    return [k for k in keys if k in found]


def _loss_table(res: Results, lang: str, meta: dict[str, Any]) -> dict[str, Any] | None:
    arms = [a for a in (f"{lang}-infonce", f"{lang}-cosent", f"{lang}-hybrid", f"{lang}-stock") if res.get(a)]
    if not arms:
        return None
    keys = present(res, [f"base-{lang}", *arms], TYPE_ORDER + ["avg"])
    rows, plot = [], {}
    if res.get(f"base-{lang}"):
        dim = top_dim(res[f"base-{lang}"][0])
        base = type_scores(res[f"base-{lang}"][0], dim)
        rows.append([f"base (no training, {dim} dims)", "–", "–"] + [fmt(base.get(k)) for k in keys])
        plot["base"] = {k: (base.get(k), 0.0) for k in keys}
    for arm in arms:
        for e in res[arm]:
            sc = type_scores(e, 768)
            rows.append([arm, str(e["seed"]), _rows_drawn(e)] + [fmt(sc.get(k)) for k in keys])
        stats = {k: mean_spread([type_scores(e, 768).get(k) for e in res[arm]]) for k in keys}
        if len(res[arm]) > 1:
            rows.append([f"**{arm} mean ± half-range**", _seeds(res, arm), ""] + [fmt(*stats[k]) for k in keys])
        plot[arm] = stats
    names = {"zh": "zh-local", "en": "en-local"}
    dropped = "; ".join(f"{k}: {v}" for k, v in (meta.get("infonce_conversion_dropped") or {}).get(lang, {}).items())
    return {
        "id": f"a_{lang}_loss_ablation",
        "title": f"Table A-{lang} — Piccolo2 loss ablation ({names[lang]}, main scores × 100 at 768 dims, per task type; avg = mean of the type averages)",
        "caption": "infonce: every dataset as InfoNCE pairs/triplets; cosent: + CoSENT on STS and pair classification; "
        "hybrid: + label-contrastive on classification (Piccolo2's routing); stock: SentenceTransformerTrainer with "
        "CoSENTLoss / MultipleNegativesRankingLoss. rows = rows drawn (duplicate-free InfoNCE batches can come out short); "
        f"the InfoNCE conversion leaves out {dropped} of the sliced rows. {meta['caption'][lang]}",
        "markdown": md(["arm", "seed", "rows", *[TYPE_SHORT[k] for k in keys]], rows),
        "plot": plot,
    }


def _cell(stat: tuple[float | None, float | None], seeds: int) -> str:
    """mean ± half-range over several seeds, the bare value for one."""
    return fmt(*stat) if seeds > 1 else fmt(stat[0])


def _matryoshka_table(res: Results, meta: dict[str, Any]) -> dict[str, Any] | None:
    """B: the zh-local average at each embedding prefix, with and without the Matryoshka loss."""
    if not (res.get("zh-hybrid") and res.get("zh-nomrl")):
        return None
    rows, plot = [], {}
    for arm, label in (("base-zh", "base, no projection (prefix of 384)"), ("zh-nomrl", "projection 768, no MRL"), ("zh-hybrid", "projection 768 + MRL")):
        if not res.get(arm):
            continue
        stats = [mean_spread([type_scores(e, d).get("avg") for e in res[arm]]) for d in MRL_DIMS]
        rows.append([label, _seeds(res, arm) if arm != "base-zh" else "–"] + [_cell(s, len(res[arm])) for s in stats])
        plot[label] = {str(d): s[0] for d, s in zip(MRL_DIMS, stats)}
    return {
        "id": "b_matryoshka",
        "title": "Table B — Matryoshka: zh-local average × 100 at each embedding prefix (zh-hybrid vs zh-nomrl; mean ± half-range over seeds)",
        "caption": meta["caption"]["zh"], "markdown": md(["model", "seed(s)", *map(str, MRL_DIMS)], rows), "plot": plot,
    }  # fmt: skip


def _projection_table(res: Results, meta: dict[str, Any]) -> dict[str, Any] | None:
    """C: dimension scaling, the 384→768 projection against the backbone's own 384 dims."""
    if not (res.get("zh-hybrid") and res.get("zh-noproj")):
        return None
    keys = present(res, ["base-zh", "zh-noproj", "zh-hybrid"], TYPE_ORDER + ["avg"])
    rows, plot = [], {}
    for arm, label, dim in (("base-zh", "base (384)", 0), ("zh-noproj", "no projection (384, MRL 384…64)", 0),
                            ("zh-hybrid", "projection 384→768 (+MRL)", 768), ("zh-hybrid", "projection 384→768, first 384 dims", 384)):  # fmt: skip
        if not res.get(arm):
            continue
        dim = dim or top_dim(res[arm][0])
        stats = {k: mean_spread([type_scores(e, dim).get(k) for e in res[arm]]) for k in keys}
        rows.append([label, _seeds(res, arm) if arm != "base-zh" else "–"] + [_cell(stats[k], len(res[arm])) for k in keys])
        plot[label] = stats
    return {
        "id": "c_projection",
        "title": "Table C — dimension scaling: zh-hybrid (projection 384→768) vs zh-noproj (zh-local × 100, per task type)",
        "caption": meta["caption"]["zh"], "markdown": md(["model", "seed(s)", *[TYPE_SHORT[k] for k in keys]], rows), "plot": plot,
    }  # fmt: skip


def _pearson_table(res: Results, meta: dict[str, Any]) -> dict[str, Any] | None:
    """E: Pearson against CoSENT as the STS dataset's loss, the rest of the hybrid recipe unchanged."""
    if not (res.get("zh-hybrid") and res.get("zh-pearson")):
        return None
    rows, plot = [], {}
    for arm, label in (("zh-hybrid", "CoSENT on STS (τ 0.05)"), ("zh-pearson", "Pearson on STS")):
        cols = {
            "zh-stsb-dev": mean_spread([score(e, "zh-stsb-dev", 768) for e in res[arm]]),
            "STS avg": mean_spread([type_scores(e, 768).get("sts") for e in res[arm]]),
            "PairCls": mean_spread([type_scores(e, 768).get("pair_classification") for e in res[arm]]),
            "avg": mean_spread([type_scores(e, 768).get("avg") for e in res[arm]]),
        }
        rows.append([label, _seeds(res, arm)] + [_cell(v, len(res[arm])) for v in cols.values()])
        plot[label] = cols
    return {
        "id": "e_pearson_vs_cosent",
        "title": "Table E — Pearson vs CoSENT for the STS dataset (rest of the zh-hybrid recipe unchanged; 768 dims, × 100)",
        "caption": meta["caption"]["zh"], "markdown": md(["STS loss", "seed(s)", "zh-stsb-dev Spearman", "STS avg", "PairCls avg", "zh-local avg"], rows), "plot": plot,
    }  # fmt: skip


def _mining_table(res: Results, meta: dict[str, Any]) -> dict[str, Any] | None:
    """F: negatives mined once by the base model against the same start with Conan's dynamic re-mining."""
    if not (res.get("zh-static") and res.get("zh-dynamic")):
        return None
    rows, plot = [], {}
    for arm, label in (
        ("zh-hybrid", "bge's own negatives (zh-hybrid)"),
        ("zh-static", "mined once by the base model, fixed"),
        ("zh-dynamic", "same start + dynamic mining (Conan rule)"),
    ):
        if not res.get(arm):
            continue
        m = res[arm][0].get("mining") or {}
        events = f"{int(m.get('mining/replaced', 0))} / {int(m.get('mining/checked', 0))}" if arm == "zh-dynamic" else "–"
        cols = {k: mean_spread([type_scores(e, 768).get(k) for e in res[arm]]) for k in ("retrieval", "sts", "avg")}
        rows.append([label, _seeds(res, arm)] + [_cell(v, len(res[arm])) for v in cols.values()] + [events])
        plot[label] = cols
    mining, sizes = meta.get("mining") or {}, meta["sizes"]
    return {
        "id": "f_dynamic_mining",
        "title": "Table F — dynamic hard-negative mining on vs off (bge retrieval rows, negatives mined offline by the base model; 768 dims, × 100)",
        "caption": f"{meta['caption']['zh']}; pool {sizes['mine_pool']} candidates per row from ranks {sizes['mine_range'][0]}–{sizes['mine_range'][1]} "
        f"of the base model over a {mining.get('corpus', '?')}-text corpus, {sizes['bge_negatives']} active negatives per row "
        f"(static: the pool's first ones, fixed), re-scored every {sizes['every']} steps (mining.dynamic covers every retrieval "
        "dataset with negatives: checked also counts the NLI rows, whose pool is their own contradiction, never replaced); "
        f"{mining.get('short_rows', '?')} of {mining.get('rows', '?')} rows got fewer than {sizes['mine_pool']} candidates ({mining.get('empty_rows', '?')} none)",
        "markdown": md(["negatives of the bge rows", "seed(s)", "Retr (cmrc2018)", "STS avg", "zh-local avg", "replaced / checked"], rows),
        "plot": plot,
    }  # fmt: skip


def build_tables(res: Results, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Each table whose arms ran, in order A-zh, A-en, B, C, E, F: id, title, caption, markdown, and the numbers its plot draws."""
    tables = [_loss_table(res, "zh", meta), _loss_table(res, "en", meta)]
    tables += [build(res, meta) for build in (_matryoshka_table, _projection_table, _pearson_table, _mining_table)]
    return [t for t in tables if t]


def plot_table(table: dict[str, Any], path: Path) -> None:
    """A line plot over dims for Table B, grouped bars (± half-range) for the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    plot = table["plot"]
    if table["id"] == "b_matryoshka":
        for label, series in plot.items():
            points = [(int(d), v) for d, v in series.items() if v is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(MRL_DIMS, [str(d) for d in MRL_DIMS])
        ax.set_xlabel("embedding dims (prefix)")
        ax.set_ylabel("average × 100")
    else:
        names = list(plot)
        groups = list(dict.fromkeys(k for s in plot.values() for k in s))
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            vals, errs = [], []
            for g in groups:
                v = plot[name].get(g)
                mean, spread = v if isinstance(v, (tuple, list)) else (v, 0.0)
                vals.append(float("nan") if mean is None else mean)
                errs.append(spread or 0.0)
            xs = [j + i * width for j in range(len(groups))]
            ax.bar(xs, vals, width=width, yerr=errs if any(errs) else None, capsize=3, label=name)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(groups))], [TYPE_SHORT.get(g, g) for g in groups], rotation=20)
        ax.set_ylabel("score × 100")
    head, _, rest = table["title"].partition(" — ")
    ax.set_title(f"{head} — {rest.split(' (')[0]}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
