"""Regression tests for the training path under the conditions users hit: any device, ragged negatives, label pools, false negatives, workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from helpers import QUICKSTART, stray_tensors_fail
from hybridembed.data.collator import DatasetView, HybridCollator, text_hash
from hybridembed.losses import InfoNCELoss, LabelContrastiveLoss, build_loss
from hybridembed.recipe import LossName, loss_config
from hybridembed.tasks import TaskType


def _tiny_model(tiny_bert_dir, device):
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    return build_model(ModelConfig(backbone=str(tiny_bert_dir), max_seq_length=32)).to(device)


def _on(device, features):
    return {k: v.to(device) for k, v in features.items() if torch.is_tensor(v)}


def _ids(queries, positives, negatives):
    """The collator's label dict for hand-made rows (negatives: per row, a ragged list)."""
    width = max((len(n) for n in negatives), default=0)
    return {
        "negative_counts": torch.tensor([len(n) for n in negatives]),
        "query_ids": torch.tensor([text_hash(q) for q in queries]),
        "positive_ids": torch.tensor([text_hash(p) for p in positives]),
        "negative_ids": torch.tensor([[text_hash(n[j]) if j < len(n) else 0 for j in range(width)] for n in negatives]).view(len(queries), width),
    }


# --- item 1: the merged forward and the losses run on the batch's device ----------------------------


def test_merged_forward_and_losses_create_no_tensor_off_the_batch_device(tiny_bert_dir, device):
    """Label texts and repeated STS sentences take the de-duplication path; nothing may land on another device."""
    model = _tiny_model(tiny_bert_dir, device)
    collator = HybridCollator(model.preprocess, {
        "cls": DatasetView(TaskType.CLASSIFICATION, 3, label_pool=["card", "top up", "refund", "pin"]),
        "sts": DatasetView(TaskType.STS, 0),
    })  # fmt: skip
    cls_rows = [{"dataset_name": "cls", "row_id": i, "query": f"text {i}", "positives": [["card", "pin"][i % 2]], "negatives": None} for i in range(6)]
    sts_rows = [{"dataset_name": "sts", "text1": "a man plays", "text2": f"a man plays {i}", "score": float(i)} for i in range(4)]
    for rows, loss in ((cls_rows, LabelContrastiveLoss(model)), (sts_rows, build_loss(model, TaskType.STS, loss_config(LossName.COSENT)))):
        batch = collator(rows)
        prefixes = [c for c in ("query", "positive", "negative_1", "negative_2", "negative_3", "text1", "text2") if f"{c}_input_ids" in batch]
        features = [_on(device, {k[len(c) + 1 :]: v for k, v in batch.items() if k.startswith(c + "_")}) for c in prefixes]
        labels = batch["label"]
        labels = {k: v.to(device) for k, v in labels.items()} if isinstance(labels, dict) else labels.to(device)
        context = stray_tensors_fail() if device == "cpu" else torch.device(device)
        with context:
            value = loss(features, labels)
        assert value.device.type == device and torch.isfinite(value)
        value.backward()


# --- item 2: classification rows in query + positives form get their label pool ---------------------


def test_classification_rows_without_negatives_train_against_the_dataset_labels(tmp_path, tiny_bert_dir):
    from hybridembed.data import load_dataset
    from hybridembed.recipe import DatasetConfig

    path = tmp_path / "intents.jsonl"
    labels = ["card arrival", "lost card", "top up", "refund"]
    path.write_text("".join(json.dumps({"query": f"question {i}", "positives": [labels[i % 4]]}) + "\n" for i in range(8)))
    dataset = load_dataset(DatasetConfig(path=str(path), task="classification"))
    assert dataset.label_pool == sorted(labels)
    model = _tiny_model(tiny_bert_dir, "cpu")
    collator = HybridCollator(model.preprocess, {"intents": DatasetView(TaskType.CLASSIFICATION, 10, label_pool=dataset.label_pool)})
    batch = collator([{**row, "dataset_name": "intents", "row_id": i} for i, row in enumerate(dataset.rows)])
    assert batch["label"]["negative_counts"].tolist() == [3] * 8  # every other label, none invented
    features = [
        {k[len(c) + 1 :]: v for k, v in batch.items() if k.startswith(c + "_")} for c in ("query", "positive", "negative_1", "negative_2", "negative_3")
    ]
    loss = LabelContrastiveLoss(model)(features, batch["label"])
    loss.backward()
    assert loss.item() > 0
    assert sum(p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None) > 0


# --- item 3: every row keeps its own hard negatives; empty slots are masked --------------------------


def test_collator_gives_each_row_its_own_negatives_and_fills_empty_slots_with_its_positive(tiny_bert_dir):
    model = _tiny_model(tiny_bert_dir, "cpu")
    collator = HybridCollator(model.preprocess, {"r": DatasetView(TaskType.RETRIEVAL, 3)}, seed=1)
    negatives = [[], ["n1"], ["m1", "m2", "m3", "m4", "m5"], ["k1", "k1", "k2"]]
    rows = [{"dataset_name": "r", "row_id": i, "query": f"q{i}", "positives": [f"p{i}"], "negatives": n, "draw_key": (0, 4)} for i, n in enumerate(negatives)]
    batch = collator(rows)
    assert batch["label"]["negative_counts"].tolist() == [0, 1, 3, 2]  # min(3, own); a repeated text counts once
    decoded = [[model.tokenizer.decode(ids, skip_special_tokens=True) for ids in batch[f"negative_{j}_input_ids"]] for j in (1, 2, 3)]
    per_row = list(zip(*decoded))
    assert per_row[0] == ("p0", "p0", "p0") and per_row[1] == ("n1", "p1", "p1")
    assert set(per_row[2]) <= {"m1", "m2", "m3", "m4", "m5"} and len(set(per_row[2])) == 3
    assert sorted(per_row[3][:2]) == ["k1", "k2"] and per_row[3][2] == "p3"
    assert batch["label"]["negative_ids"][0].tolist() == [0, 0, 0]


def test_infonce_with_ragged_negatives_equals_the_loss_over_the_real_candidates_only():
    torch.manual_seed(0)
    queries, positives = ["q0", "q1", "q2"], ["p0", "p1", "p2"]
    negatives = [[], ["a"], ["b", "c"]]
    q, p = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8)
    real = {"a": torch.randn(8), "b": torch.randn(8), "c": torch.randn(8)}
    columns = [torch.stack([real[n[j]] if j < len(n) else p[i] for i, n in enumerate(negatives)]) for j in range(2)]
    loss = InfoNCELoss(None, temperature=0.1).loss_from_embeddings(q, p, columns, _ids(queries, positives, negatives))
    candidates = F.normalize(torch.cat([p, torch.stack(list(real.values()))]), dim=-1)
    expected = F.cross_entropy(F.normalize(q, dim=-1) @ candidates.T / 0.1, torch.arange(3))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    own = LabelContrastiveLoss(None, temperature=0.1, weight=1.0).loss_from_embeddings(q, p, columns, _ids(queries, positives, negatives))
    by_row = []
    for i, n in enumerate(negatives):
        cands = F.normalize(torch.stack([p[i], *[real[t] for t in n]]), dim=-1)
        by_row.append(F.cross_entropy((F.normalize(q[i], dim=-1) @ cands.T / 0.1)[None], torch.tensor([0])))
    assert own.item() == pytest.approx(torch.stack(by_row).mean().item(), abs=1e-5)


# --- item 9: a candidate equal to the query's own positive is not a negative ------------------------


def test_candidates_identical_to_the_query_positive_are_masked_in_batch():
    torch.manual_seed(1)
    queries, positives = ["q0", "q1", "q2"], ["shared", "p1", "shared"]  # rows 0 and 2 have the same positive text
    negatives = [["p1"], ["x"], ["y"]]  # row 0's hard negative is row 1's positive
    q, p, n = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    p[2] = p[0]
    n[0] = p[1]
    loss = InfoNCELoss(None, temperature=0.1).loss_from_embeddings(q, p, [n], _ids(queries, positives, negatives))
    qn, cand = F.normalize(q, dim=-1), F.normalize(torch.cat([p, n]), dim=-1)  # candidates: p0 p1 p2 n0 n1 n2
    # query 0: p2 == its positive → masked; query 1: n0 == its positive p1 → masked; query 2: p0 == its positive → masked.
    keep = {0: [0, 1, 3, 4, 5], 1: [0, 1, 2, 4, 5], 2: [1, 2, 3, 4, 5]}
    expected = sum(F.cross_entropy((qn[i] @ cand[keep[i]].T / 0.1)[None], torch.tensor([keep[i].index(i)])) for i in range(3)) / 3
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    unmasked = InfoNCELoss(None, temperature=0.1).loss_from_embeddings(q, p, [n])
    assert unmasked.item() != pytest.approx(loss.item(), abs=1e-3)


# --- item 8: Matryoshka is the mean over dims ---------------------------------------------------


def test_matryoshka_defaults_to_the_mean_over_dims(tiny_bert_dir):
    model = _tiny_model(tiny_bert_dir, "cpu")
    wrapped = build_loss(model, TaskType.RETRIEVAL, loss_config(LossName.INFONCE), matryoshka_dims=[64, 32, 16, 8])
    assert list(wrapped.matryoshka_weights) == [0.25] * 4
    explicit = build_loss(model, TaskType.RETRIEVAL, loss_config(LossName.INFONCE), [64, 32], matryoshka_weights=[1.0, 2.0])
    assert list(explicit.matryoshka_weights) == [1.0, 2.0]


# --- items 5 and 6: draws are a pure function of (seed, epoch, batch, rank) --------------------------


def _recipe(tmp_path: Path, backbone: Path, **training) -> Path:
    recipe = {
        "model": {"backbone": str(backbone), "max_seq_length": 32},
        "datasets": [
            {"path": str(QUICKSTART / "flagembedding_retrieval.jsonl"), "task": "retrieval", "num_negatives": 2, "batch_size": 4},
            {"path": str(QUICKSTART / "banking77_train.csv"), "task": "classification", "max_samples": 64, "num_negatives": 4},
        ],
        "training": {"output_dir": str(tmp_path / "out"), "batch_size": 8, "max_steps": 6, "report_to": [], **training},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _batches(trainer, count: int) -> list[dict]:
    out = []
    for batch in trainer.get_train_dataloader():
        out.append({k: (v.tolist() if torch.is_tensor(v) else v) for k, v in batch.items() if k != "label"})
        if len(out) == count:
            return out
    return out


def test_draws_do_not_depend_on_workers_or_on_batches_collated_before(tmp_path, tiny_bert_dir):
    from hybridembed.recipe import load_recipe
    from hybridembed.training.builder import prepare_training

    inline = prepare_training(load_recipe(_recipe(tmp_path, tiny_bert_dir)))
    workers = prepare_training(load_recipe(_recipe(tmp_path, tiny_bert_dir, dataloader_num_workers=2)))
    first = _batches(inline, 8)
    assert first == _batches(workers, 8)  # two workers draw exactly what one process draws
    assert first == _batches(inline, 8)  # a second pass (as after a resume) draws the same again
    # Two workers used to share one RNG copy: their batches repeated the same draws.
    drawn = [tuple(map(tuple, b["negative_1_input_ids"])) for b in first if "negative_1_input_ids" in b]
    assert len(set(drawn)) == len(drawn)
    collator = inline.data_collator
    rows = [{"dataset_name": "banking77_train", "row_id": i, "query": f"t{i}", "positives": ["card"], "negatives": None, "draw_key": (2, 7)} for i in range(4)]
    assert collator.rng_for(rows).integers(1 << 30) == collator.rng_for(rows).integers(1 << 30)
    other_epoch = [{**r, "draw_key": (3, 7)} for r in rows]
    assert collator.rng_for(rows).integers(1 << 30) != collator.rng_for(other_epoch).integers(1 << 30)


def test_dynamic_mining_with_dataloader_workers_is_a_recipe_error(tmp_path, tiny_bert_dir):
    from hybridembed.errors import RecipeError
    from hybridembed.recipe import load_recipe
    from hybridembed.training.builder import prepare_training

    path = _recipe(tmp_path, tiny_bert_dir, dataloader_num_workers=2)
    recipe = yaml.safe_load(path.read_text())
    recipe["mining"] = {"dynamic": {"every_steps": 3}}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match="dataloader_num_workers"):
        prepare_training(load_recipe(path))


def test_two_ranks_mask_a_positive_shared_across_ranks_and_gather_ragged_negatives(tmp_path):
    from helpers import WORKERS, torchrun

    out = tmp_path / "result.json"
    result = torchrun(str(WORKERS / "masked_gather.py"), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    ranks = data["ranks"]
    total = sum(r["rows"] for r in ranks)
    gathered = sum(r["rows"] * r["loss"] for r in ranks) / total
    assert gathered == pytest.approx(data["single_loss"], abs=1e-5)  # same as one process on the whole batch
    assert sum(r["rows"] * r["unmasked"] for r in ranks) / total != pytest.approx(gathered, abs=1e-3)  # the mask mattered
