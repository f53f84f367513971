"""Each loss against a hand computation on small tensors, values and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hybridembed.losses import CoSENTLoss, InfoNCELoss, LabelContrastiveLoss, PearsonLoss, build_loss
from hybridembed.recipe import LossName, loss_config
from hybridembed.tasks import TaskType


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def _leaf(t):
    return t.clone().float().requires_grad_(True)


def test_infonce_scores_each_query_against_all_positives_and_negatives():
    q, p, n = _leaf(_unit([1, 0], [0, 1])), _leaf(_unit([1, 1], [-1, 1])), _leaf(_unit([1, -1], [0, -1]))
    tau = 0.5
    loss = InfoNCELoss(model=None, temperature=tau).loss_from_embeddings(q, p, [n])
    expected = 0.0
    cands = torch.cat([p, n]).detach().double()
    qs = q.detach().double()
    for i in range(2):
        logits = [float(qs[i] @ c) / tau for c in cands]
        expected += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    assert loss.item() == pytest.approx(expected / 2, abs=1e-6)
    loss.backward()
    # d loss / d q_0 by hand: (softmax-weighted candidates − own positive) / (tau * B)
    logits0 = torch.stack([qs[0] @ c for c in cands]) / tau
    weights = torch.softmax(logits0, 0)
    grad_q0 = ((weights[:, None] * cands).sum(0) - cands[0]) / tau / 2
    # The loss normalises its inputs; for a unit q that projects the gradient onto q's tangent space.
    grad_q0 = grad_q0 - (grad_q0 @ qs[0]) * qs[0]
    assert torch.allclose(q.grad[0].double(), grad_q0, atol=1e-5)


def test_infonce_bidirectional_adds_passage_to_query_term():
    q, p = _unit([1, 0], [0.6, 0.8]), _unit([0.8, 0.6], [0, 1])
    one_way = InfoNCELoss(None, temperature=0.1).loss_from_embeddings(q.float(), p.float(), [])
    two_way = InfoNCELoss(None, temperature=0.1, bidirectional=True).loss_from_embeddings(q.float(), p.float(), [])
    backward = F.cross_entropy((p @ q.T / 0.1).float(), torch.arange(2))
    assert two_way.item() == pytest.approx(one_way.item() + backward.item(), abs=1e-6)


def test_label_contrastive_ignores_other_rows():
    q = _leaf(_unit([1, 0], [0, 1]))
    pos, neg = _leaf(_unit([1, 0.2], [0.3, 1])), _leaf(_unit([0.9, 0.4], [0.5, 1]))
    tau, weight = 0.05, 0.2
    loss_fn = LabelContrastiveLoss(None, weight=weight)
    loss = loss_fn.loss_from_embeddings(q, pos, [neg])
    expected = 0.0
    for i in range(2):
        a, b = float(q[i].detach() @ pos[i].detach()) / tau, float(q[i].detach() @ neg[i].detach()) / tau
        expected += -a + math.log(math.exp(a) + math.exp(b))
    assert loss.item() == pytest.approx(weight * expected / 2, rel=1e-5)
    # No in-batch negatives: the batch loss is the mean of each row's loss on its own.
    alone = [loss_fn.loss_from_embeddings(q[i : i + 1], pos[i : i + 1], [neg[i : i + 1]]).item() for i in range(2)]
    assert loss.item() == pytest.approx(sum(alone) / 2, rel=1e-5)
    with_in_batch = InfoNCELoss(None, temperature=tau, weight=weight).loss_from_embeddings(q, pos, [neg])
    assert with_in_batch.item() > loss.item()


class _Identity(torch.nn.Module):
    """A 'model' whose sentence embedding is the features' vector, to test losses end to end."""

    def forward(self, features):
        return {"sentence_embedding": features["x"]}


def test_cosent_matches_formula_and_weight():
    u = _leaf(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    v = _leaf(torch.tensor([[1.0, 0.1], [0.0, 1.0], [1.0, 0.0]]))
    scores = torch.tensor([5.0, 2.5, 0.0])
    loss = CoSENTLoss(_Identity(), temperature=0.05, weight=0.04)([{"x": u}, {"x": v}], scores)
    cos = F.cosine_similarity(u.detach(), v.detach()).double()
    terms = [0.0] + [float((cos[j] - cos[i]) / 0.05) for i in range(3) for j in range(3) if scores[i] > scores[j]]
    expected = 0.04 * math.log(sum(math.exp(t) for t in terms))
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    loss.backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()


def test_pearson_loss_is_one_minus_correlation_and_scale_invariant():
    u = _leaf(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.5]]))
    v = _leaf(torch.tensor([[1.0, 0.2], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))
    scores = torch.tensor([4.0, 2.0, 0.5, 3.0])
    loss = PearsonLoss(_Identity())([{"x": u}, {"x": v}], scores)
    cos = F.cosine_similarity(u.detach(), v.detach()).numpy()
    r = float(torch.corrcoef(torch.stack([torch.tensor(cos), scores]))[0, 1])
    assert loss.item() == pytest.approx(1 - r, abs=1e-5)
    rescaled = PearsonLoss(_Identity())([{"x": u}, {"x": v}], scores * 10 + 3)
    assert rescaled.item() == pytest.approx(loss.item(), abs=1e-5)
    loss.backward()
    # Finite-difference check of one gradient coordinate.
    eps = 1e-3
    u2 = u.detach().clone()
    u2[0, 1] += eps
    plus = PearsonLoss(_Identity())([{"x": u2}, {"x": v.detach()}], scores).item()
    u2[0, 1] -= 2 * eps
    minus = PearsonLoss(_Identity())([{"x": u2}, {"x": v.detach()}], scores).item()
    assert u.grad[0, 1].item() == pytest.approx((plus - minus) / (2 * eps), abs=1e-3)


def test_pearson_constant_scores_give_zero_loss():
    u, v = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)
    assert PearsonLoss(_Identity())([{"x": u}, {"x": v}], torch.ones(3)).item() == 0.0


def test_routing_rejects_a_loss_for_the_wrong_row_shape():
    from hybridembed.errors import RecipeError

    with pytest.raises(RecipeError, match="cosent trains on scored_pair rows"):
        build_loss(None, TaskType.RETRIEVAL, loss_config(LossName.COSENT))
    with pytest.raises(ValueError, match="bidirectional"):
        loss_config(LossName.COSENT, bidirectional=True)


VALUES = {"temperature": 0.1, "bidirectional": True, "in_batch_negatives": False}


@pytest.mark.parametrize("name", list(LossName))
def test_each_losss_settings_are_what_its_class_takes_and_nothing_else(name, tmp_path):
    """The settings model of each loss (recipe validation) against its class: every setting builds, every other is an unknown key of the recipe."""
    from hybridembed.errors import RecipeError
    from hybridembed.losses import LOSS_CLASSES
    from hybridembed.recipe import LOSS_SETTINGS, recipe_from_mapping

    loss_class = LOSS_CLASSES[name]
    settings = set(LOSS_SETTINGS[name].model_fields) - {"name"}
    assert "weight" in settings
    for key in settings:
        value = VALUES.get(key, 0.5)
        assert getattr(build_loss(_Identity(), _task_of(loss_class), loss_config(name, **{key: value})), key) == value
    recipe = {"model": {"backbone": "x"}, "datasets": [{"path": "d.jsonl", "task": "sts"}], "losses": {"sts": {"name": str(name)}}}
    assert type(recipe_from_mapping(recipe, tmp_path).losses[TaskType.STS]) is LOSS_SETTINGS[name]
    for key in set(VALUES) - settings:
        recipe = {"model": {"backbone": "x"}, "datasets": [{"path": "d.jsonl", "task": "sts"}], "losses": {"sts": {"name": str(name), key: VALUES[key]}}}
        with pytest.raises(RecipeError, match=f"losses.sts.{name}.{key}: unknown key"):
            recipe_from_mapping(recipe, tmp_path)


def _task_of(loss_class) -> TaskType:
    return next(task for task in TaskType if task.shape is loss_class.accepts)


def test_a_loss_without_a_known_name_is_one_line_listing_the_names(tmp_path):
    from hybridembed.errors import RecipeError
    from hybridembed.recipe import recipe_from_mapping

    for entry in ({"name": "triplet"}, {"temperature": 0.1}):
        recipe = {"model": {"backbone": "x"}, "datasets": [{"path": "d.jsonl", "task": "sts"}], "losses": {"sts": entry}}
        with pytest.raises(RecipeError, match="losses.sts: name: one of infonce, cosent, label_contrastive, pearson$"):
            recipe_from_mapping(recipe, tmp_path)


def test_default_temperatures_follow_piccolo2_and_weights_are_equal():
    assert (InfoNCELoss(None).temperature, InfoNCELoss(None).weight) == (0.01, 1.0)
    assert (CoSENTLoss(_Identity()).temperature, CoSENTLoss(_Identity()).weight) == (0.05, 1.0)
    assert (LabelContrastiveLoss(None).temperature, LabelContrastiveLoss(None).weight) == (0.05, 1.0)
    # Piccolo2's weights are the piccolo2 preset of the router.
    from hybridembed.losses import LOSS_WEIGHT_PRESETS

    assert LOSS_WEIGHT_PRESETS["piccolo2"] == {LossName.COSENT: 0.04, LossName.LABEL_CONTRASTIVE: 0.2}
    preset = build_loss(_Identity(), TaskType.STS, loss_config(LossName.COSENT), preset="piccolo2")
    assert preset.weight == 0.04 and build_loss(_Identity(), TaskType.STS, loss_config(LossName.COSENT, weight=0.5), preset="piccolo2").weight == 0.5


@pytest.mark.parametrize(
    ("task", "loss_name", "matryoshka"),
    [("retrieval", "infonce", None), ("retrieval", "infonce", [64, 32]), ("sts", "cosent", [64, 16]), ("sts", "pearson", None),
     ("classification", "label_contrastive", None)],
)  # fmt: skip
def test_gradcache_equals_the_uncached_loss_and_gradients(tiny_model_dir, task, loss_name, matryoshka):
    from sentence_transformers import SentenceTransformer

    from hybridembed.tasks import RowShape

    model = SentenceTransformer(str(tiny_model_dir))
    model.eval()  # no dropout: the uncached and cached passes see identical networks
    rng = np.random.default_rng(0)
    words = "a man woman dog cat plays runs guitar piano the on in park street".split()
    sentences = [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(40)]
    columns = 2 if TaskType(task).shape is RowShape.SCORED_PAIR else 4
    features = [model.preprocess(sentences[i * 10 : (i + 1) * 10]) for i in range(columns)]
    labels = torch.tensor(rng.uniform(0, 5, size=10), dtype=torch.float32)
    results = []
    for cache in (None, 3):
        model.zero_grad()
        loss = build_loss(model, TaskType(task), loss_config(loss_name), matryoshka, cache_minibatch_size=cache)
        value = loss([dict(f) for f in features], labels)
        value.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((value.item(), grads))
    (plain, plain_grads), (cached, cached_grads) = results
    assert cached == pytest.approx(plain, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(cached_grads, plain_grads, rtol=1e-4, atol=1e-5)
