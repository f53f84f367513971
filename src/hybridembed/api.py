"""The Python API for notebooks and scripts: `train`, `evaluate` and `mine` on the same code paths as the CLI.

Each function takes what its command takes (a recipe, a suite, a data file) as a path or as an object,
and returns a Python value instead of printing: the model folder, the results dict, the mining report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from hybridembed.evaluation.results import SuiteResults
    from hybridembed.evaluation.suite import Suite
    from hybridembed.mining.offline import MiningReport
    from hybridembed.model_folder import RunResult
    from hybridembed.recipe import Recipe


def flatten_overrides(overrides: Mapping[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """Keyword overrides as dotted keys: ``training={"max_steps": 5}`` and ``training__max_steps=5`` both give
    ``{"training.max_steps": 5}``; keys of `overrides` are taken as dotted keys already."""
    flat: dict[str, Any] = dict(overrides or {})

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, child in value.items():
                add(f"{prefix}.{key}", child)
        else:
            flat[prefix] = value

    for key, value in sections.items():
        add(key.replace("__", "."), value)
    return flat


def load(recipe: str | Path | Mapping[str, Any] | Recipe, overrides: Mapping[str, Any] | None = None, **sections: Any) -> Recipe:
    """A validated recipe from a YAML path, a mapping (relative paths resolve against the working directory) or a Recipe."""
    from hybridembed.recipe import Recipe, load_recipe, recipe_from_mapping

    flat = flatten_overrides(overrides, **sections)
    if isinstance(recipe, Recipe):
        return recipe_from_mapping(recipe.model_dump(mode="json"), Path.cwd(), "recipe", flat) if flat else recipe
    if isinstance(recipe, Mapping):
        return recipe_from_mapping(dict(recipe), Path.cwd(), "recipe", flat)
    return load_recipe(recipe, flat)


def train(recipe: str | Path | Mapping[str, Any] | Recipe, overrides: Mapping[str, Any] | None = None, **sections: Any) -> RunResult:
    """Validate the data and train as the recipe says (every stage); return the run: `.folder` (the saved model), `.global_step`, `.metrics`.

    The result is path-like (`os.fspath`, `str`), so it can be passed wherever a model folder is.

    Example::

        import hybridembed
        run = hybridembed.train("recipes/quickstart.yaml", training={"max_steps": 20, "output_dir": "runs/nb"})
        print(run.folder, run.global_step, run.metrics["train_loss"])
        scores = hybridembed.evaluate(run.folder, "suites/quickstart.yaml", dims=[384, 128])
    """
    from hybridembed.training.stages import run_recipe

    text = None
    flat = flatten_overrides(overrides, **sections)
    if isinstance(recipe, (str, Path)) and not flat:
        text = Path(recipe).read_text(encoding="utf-8")  # kept verbatim in the folder, comments included
    return run_recipe(load(recipe, flat), recipe_text=text)


def evaluate(
    model: str | os.PathLike | SentenceTransformer,
    suite: str | Path | Suite,
    dims: Sequence[int] | None = None,
    batch_size: int = 32,
    out: str | Path | None = None,
    show_progress: bool = True,
) -> SuiteResults:
    """Evaluate a model (folder, hub id, bundled alias or a loaded SentenceTransformer) on a suite at each dim.

    Returns the `SuiteResults` (the dict `hybridembed eval` writes as results.json, with `.score(task, dim)`,
    `.scores(dim)` and `.average(task_type, dim)`); with `out`, writes the same report (results.json,
    results.md, plot) there too.
    """
    from hybridembed.evaluation.runner import run_suite

    name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None  # a path, or the RunResult `train` returned
    target = str(model) if isinstance(model, (str, os.PathLike)) else model
    results = run_suite(target, suite, dims=dims, batch_size=batch_size, model_name=name, show_progress=show_progress)
    if out is not None:
        from hybridembed.evaluation.report import write_report

        write_report(results, out, plot=True)
    return results


def mine(
    model: str | os.PathLike | SentenceTransformer,
    data: str | Path,
    out: str | Path,
    corpus: str | Path | Sequence[str] | None = None,
    *,
    data_format: str = "auto",
    corpus_field: str = "text",
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    **options: Any,
) -> MiningReport:
    """Mine hard negatives for the rows of `data` into `out` (as `hybridembed mine`); return the report.

    `corpus` is a file (jsonl/txt, field `corpus_field`) or a list of texts; default: the rows' own positives and
    negatives. `options` are the fields of `hybridembed.mining.offline.MiningOptions`, e.g.
    ``rank_range=(30, 100), num_negatives=7, index="ivf"``.
    """
    from hybridembed.errors import HybridembedError
    from hybridembed.mining.offline import MiningOptions, load_queries, mine_hard_negatives
    from hybridembed.modeling.model import load_model

    try:
        settings = MiningOptions(**options)
    except TypeError as err:
        raise HybridembedError(f"mine: {err}") from None
    if Path(out).resolve() == Path(data).resolve():
        raise HybridembedError(f"mine: out {out} would overwrite data; choose another file")
    fingerprint = None
    if isinstance(model, (str, os.PathLike)):
        from hybridembed.mining.cache import model_fingerprint

        source = os.fspath(model)
        model = load_model(source)
        fingerprint = model_fingerprint(model, source)  # from the folder's files, not its weights
    # A corpus file streams into mining's on-disk text store (no list of the corpus in memory).
    return mine_hard_negatives(
        model, load_queries(data, data_format), out, corpus, settings, cache_dir, progress=show_progress, fingerprint=fingerprint,
        corpus_field=corpus_field,
    )  # fmt: skip
