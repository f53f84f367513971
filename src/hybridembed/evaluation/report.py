"""Write a run's results (results.json, results.md, dims plot) and compare two results files.

What this adds over mteb's TaskResult files: one JSON for a whole suite and all Matryoshka
dims, a Markdown table (tasks × dims, task-type averages, overall average), a PNG of main
score vs dim per task type, and a per-task delta table between two runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybridembed.errors import HybridembedError
from hybridembed.evaluation.results import SuiteResults

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results_dims.png"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def render_markdown(results: dict[str, Any]) -> str:
    """The Markdown report: main scores ×100, one column per dim."""
    results = SuiteResults(results)
    dims = results.dims
    lines = [
        f"# Evaluation of `{results.get('model')}`",
        "",
        f"Suite `{results.get('suite')}` · mteb {results.get('mteb_version')} metric definitions · "
        f"embedding dim {results.get('embedding_dim')} · {results.get('seconds', 0):.0f} s",
        "",
        "Main scores ×100 (each task's main metric in the `metric` column; dims below the model's own are prefix-truncated and re-normalised).",
        "",
        "| task | type | metric | " + " | ".join(f"dim {d}" for d in dims) + " |",
        "|---|---|---|" + "---:|" * len(dims),
    ]
    for name, task in results["tasks"].items():
        cells = [_pct(results.score(name, d)) for d in dims]
        lines.append(f"| {name} | {task['type']} | {task.get('main_metric', '')} | " + " | ".join(cells) + " |")
    for task_type in results.task_types:
        cells = [_pct(results.average(task_type, d)) for d in dims]
        lines.append(f"| *{task_type} average* | {task_type} | | " + " | ".join(cells) + " |")
    if results.get("averages", {}).get("overall"):
        cells = [f"**{_pct(results.average(dim=d))}**" for d in dims]
        lines.append("| **overall** | | | " + " | ".join(cells) + " |")
        lines += ["", f"Overall average: {results['averages'].get('overall_method', '')}."]
    extra = _secondary_metrics(results, dims[0]) if dims else []
    if extra:
        lines += ["", f"Secondary metrics at dim {dims[0]} (×100):", "", "| task | metrics |", "|---|---|", *extra]
    return "\n".join(lines) + "\n"


# Metrics shown beside the main score, per type (mteb 2.26 names).
SECONDARY = {
    "sts": ("cosine_pearson",),
    "pair_classification": ("max_ap", "max_accuracy", "max_f1"),
    "classification": ("f1",),
    "reranking": ("map_at_1000", "mrr_at_10", "ndcg_at_10"),
    "retrieval": ("ndcg_at_10", "recall_at_100", "mrr_at_10"),
}


def _secondary_metrics(results: SuiteResults, dim: int) -> list[str]:
    rows = []
    for name in results.tasks:
        metrics = results.metrics(name, dim)
        shown = [f"{k} {_pct(metrics[k])}" for k in SECONDARY.get(results.task_type(name) or "", ()) if isinstance(metrics.get(k), (int, float))]
        if shown:
            rows.append(f"| {name} | {', '.join(shown)} |")
    return rows


def plot_dims(results: dict[str, Any], path: str | Path) -> Path:
    """PNG of the task-type average main score vs dim (one line per type, plus the overall average)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    avg = results.get("averages", {})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for task_type, by_dim in sorted(avg.get("by_type", {}).items()):
        dims = sorted(by_dim, key=int)
        ax.plot([int(d) for d in dims], [100 * by_dim[d] for d in dims], marker="o", label=task_type)
    overall = avg.get("overall", {})
    if overall:
        dims = sorted(overall, key=int)
        ax.plot([int(d) for d in dims], [100 * overall[d] for d in dims], marker="s", color="black", linestyle="--", label="overall")
    all_dims = sorted({int(d) for d in overall} | {int(d) for t in avg.get("by_type", {}).values() for d in t})
    if len(all_dims) > 1 and all_dims[-1] / max(all_dims[0], 1) > 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(all_dims, [str(d) for d in all_dims])
    ax.set_xlabel("embedding dim (prefix, re-normalised)")
    ax.set_ylabel("main score ×100")
    ax.set_title(f"{results.get('model')} · {results.get('suite')}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """Write results.json, results.md and (with `plot`) results_dims.png into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / RESULTS_JSON, "markdown": out / RESULTS_MD}
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(results), encoding="utf-8")
    if plot:
        paths["plot"] = plot_dims(results, out / RESULTS_PNG)
    return paths


def load_results(path: str | Path) -> SuiteResults:
    """Read a results.json (or the results.json inside a folder) and check its shape."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HybridembedError(f"results file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise HybridembedError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise HybridembedError(f"{path}: not a hybridembed results.json (no `tasks` mapping)")
    return SuiteResults(data)


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows {task, type, dim, a, b, delta} for every (task, dim) in either run (a value is None when absent)."""
    a, b = SuiteResults(a), SuiteResults(b)
    rows = []
    for name in list(dict.fromkeys([*a.tasks, *b.tasks])):
        ta, tb = a["tasks"].get(name, {}), b["tasks"].get(name, {})
        dims = list(dict.fromkeys([*ta.get("dims", {}), *tb.get("dims", {})]))
        for dim in sorted(dims, key=int, reverse=True):
            va, vb = a.score(name, dim), b.score(name, dim)
            delta = vb - va if va is not None and vb is not None else None
            rows.append({"task": name, "type": a.task_type(name) or b.task_type(name), "dim": dim, "a": va, "b": vb, "delta": delta})
    for dim in sorted(set(a.get("averages", {}).get("overall", {})) | set(b.get("averages", {}).get("overall", {})), key=int, reverse=True):
        va, vb = a.average(dim=dim), b.average(dim=dim)
        delta = vb - va if va is not None and vb is not None else None
        rows.append({"task": "overall", "type": "", "dim": dim, "a": va, "b": vb, "delta": delta})
    return rows


def render_compare(rows: list[dict[str, Any]], name_a: str, name_b: str) -> str:
    """Markdown table of compare() rows, scores ×100, delta signed."""
    lines = ["| task | type | dim | A | B | Δ (B − A) |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        delta = "–" if r["delta"] is None else f"{100 * r['delta']:+.2f}"
        lines.append(f"| {r['task']} | {r['type']} | {r['dim']} | {_pct(r['a'])} | {_pct(r['b'])} | {delta} |")
    return f"A = {name_a}\nB = {name_b}\n\n" + "\n".join(lines) + "\n"
