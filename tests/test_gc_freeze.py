"""Training keeps the objects it starts with out of the cyclic GC's passes, collects new cycles as before, and unfreezes afterwards."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pytest

from helpers import corpus_sentences
from hybridembed.training.gc_freeze import frozen_startup_objects


class Node:
    """An object that can sit in a reference cycle and be watched through a weak reference."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def nothing_frozen_before():
    gc.collect()
    assert gc.get_freeze_count() == 0
    yield
    assert gc.get_freeze_count() == 0


def test_startup_garbage_waits_for_the_end_and_new_cycles_are_collected_inside():
    holder = [Node()]
    holder[0].other = holder[0]  # a startup object in a cycle, alive when the block begins
    startup = weakref.ref(holder[0])
    with frozen_startup_objects():
        assert gc.get_freeze_count() > 0
        holder.clear()  # the startup cycle becomes garbage while training
        new = cycle()
        gc.collect()
        assert new() is None, "a cycle made during training is collected as before"
        assert startup() is not None, "a frozen object is not collected inside the block"
    gc.collect()
    assert startup() is None, "after the block the startup objects are collectable again"


def test_nested_blocks_unfreeze_only_at_the_outermost_and_on_errors():
    with frozen_startup_objects():
        frozen = gc.get_freeze_count()
        with frozen_startup_objects():
            pass
        assert gc.get_freeze_count() == frozen
    with pytest.raises(RuntimeError), frozen_startup_objects():
        raise RuntimeError("a failed step")
    assert gc.get_freeze_count() == 0


def test_the_trainer_trains_with_its_startup_objects_frozen(tiny_bert_dir, tmp_path):
    from transformers import TrainerCallback

    from hybridembed.recipe import Recipe
    from hybridembed.training.builder import prepare_training

    sentences = list(dict.fromkeys(corpus_sentences(200)))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": sentences[2 * i], "positive": sentences[2 * i + 1]}) + "\n" for i in range(16)))
    recipe = Recipe.model_validate({
        "model": {"backbone": str(tiny_bert_dir), "max_seq_length": 16},
        "datasets": [{"path": str(data), "task": "retrieval", "batch_size": 4}],
        "training": {"output_dir": str(Path(tmp_path / "out")), "max_steps": 3, "report_to": [], "warmup_ratio": 0.0},
    })  # fmt: skip
    counts = []

    class FreezeCount(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            counts.append(gc.get_freeze_count())

    trainer = prepare_training(recipe)
    trainer.add_callback(FreezeCount())
    trainer.train()
    assert len(counts) == 3 and min(counts) > 1000  # the libraries' and the rows' objects, every step
