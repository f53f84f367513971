"""The model card of a trained folder: sentence-transformers' README.md plus what hybridembed knows of the run.

What this adds over sentence-transformers' card: the recipe in brief (backbone, steps, batch size,
learning rate), the task mixture (each dataset's task type, loss and batches trained), the Matryoshka
dims and how to truncate to them, which weights the folder holds (the best evaluated checkpoint or
the last step) and the evaluation table of that step. It is appended as one section, replaced when
the folder is written again (a later stage, a resumed run), so the card never holds two.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybridembed.recipe import Recipe

CARD_FILE = "README.md"
BEGIN = "<!-- hybridembed:begin -->"
END = "<!-- hybridembed:end -->"


def training_section(
    recipe: Recipe,
    global_step: int,
    task_batches: dict[str, int],
    dataset_tasks: dict[str, str],
    kept: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> str:
    """Markdown for the card: `kept` is {step, metric, value} of a best checkpoint (None: the last step)."""
    from hybridembed import __version__
    from hybridembed.losses import resolve_loss_config
    from hybridembed.tasks import TaskType

    t = recipe.training
    lines = [BEGIN, "## Trained with hybridembed", ""]
    lines.append(
        f"hybridembed {__version__}, recipe in `recipe.yaml` beside this card: backbone `{recipe.model.backbone}`, "
        f"{global_step} steps, batch size {t.batch_size}, learning rate {t.learning_rate:g}, seed {t.seed}."
    )
    if kept is not None:
        lines.append(f"These weights are the **best evaluated checkpoint**: step {kept['step']} of {global_step}, "
                     f"`{kept['metric']}` = {kept['value']:.4f}.")  # fmt: skip
    else:
        lines.append(f"These weights are the last step's (step {global_step}).")
    dims = sorted(recipe.model.matryoshka_dims or [], reverse=True)
    if dims:
        lines += ["", f"Matryoshka dims: {', '.join(map(str, dims))} — load with `SentenceTransformer(path, truncate_dim={dims[-1]})` "
                  "(or any listed dim) for shorter vectors."]  # fmt: skip
    lines += ["", "| dataset | task | loss | batches of this task type |", "|---|---|---|---|"]
    for ds in recipe.datasets:
        task = (dataset_tasks.get(ds.name) if ds.name else None) or (ds.task.value if ds.task else "?")
        loss = resolve_loss_config(TaskType(task), recipe.losses, ds.loss).name.value if task != "?" else "?"
        lines.append(f"| {ds.name} | {task} | {loss} | {task_batches.get(task, 0)} |")
    if evaluation is not None:
        from hybridembed.evaluation.report import render_markdown

        step = evaluation.get("global_step")
        lines += ["", f"### Evaluation at step {step} (suite `{evaluation.get('suite')}`)", "", render_markdown(evaluation).strip()]
    lines.append(END)
    return "\n".join(lines) + "\n"


def extend_model_card(folder: str | Path, section: str) -> Path:
    """Append `section` to the folder's card (replacing an earlier hybridembed section); creates the card if missing."""
    path = Path(folder) / CARD_FILE
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head.rstrip("\n") + "\n" + tail.lstrip("\n")
    path.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")
    return path
