"""The reproduction driver: its full-size plan (≥ 15,000 rows per training arm, the same rows and steps across compared arms),
its real slices (decontaminated, enough rows drawn), and its plumbing (training, model folders, evaluation, tables, PNG, JSON,
cache) on a tiny random BERT."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _needs_data(reproduce):
    if not (reproduce.DATA / "zh" / "stsb" / "train.tsv").is_file() or not (reproduce.DATA / "en" / "stsb" / "train.tsv").is_file():
        pytest.skip("needs ../shared/data")


def test_full_plan_has_enough_rows_and_matches_compared_arms():
    reproduce = _driver()
    plan = reproduce.plan(reproduce.sizes(quick=False), seeds=[0, 1])
    training = {job: e for job, e in plan.items() if e["kind"] != "base"}
    assert {e["arm"] for e in training.values()} == {a for a, s in reproduce.ARMS.items() if s["kind"] != "base"}
    for job, e in training.items():
        assert e["rows"] == e["steps"] * e["batch"] >= reproduce.MIN_ROWS, job
        assert e["source_rows_total"] >= reproduce.MIN_ROWS, job
        assert all(n % e["batch"] == 0 for n in e["source_rows"].values()), job  # full batches
        other = plan[f"{e['vs']}-s{e['seed']}"] if f"{e['vs']}-s{e['seed']}" in plan else plan[f"{e['vs']}-s0"]
        for key in ("steps", "batch", "rows", "source_rows", "lr", "mixing", "max_seq_length"):
            assert e[key] == other[key], (job, key)
    # the ablation arms run every seed, every other arm the first; Chinese before English
    assert {j for j in plan if j.endswith("-s1")} == {"zh-infonce-s1", "zh-cosent-s1", "zh-hybrid-s1"}
    order = list(plan)
    assert order[0] == "base-zh-s0" and max(order.index(j) for j in order if j.startswith("zh-")) < order.index("base-en-s0")
    # the estimate is the sum of its jobs' rows / rate + evaluation (at the measured rates the full run does
    # NOT fit the 150-minute CPU budget: docs/RESULTS.md)
    total = sum(reproduce.estimate_seconds(e) for e in plan.values())
    trained_rows = sum(e["rows"] for e in training.values())
    assert total > trained_rows / reproduce.PLAN["ours_rows_s"] > 0


def _fake_data(tmp_path):
    """A sliced-data folder with an empty file for every name the arm recipes use (validation reads none)."""
    import yaml

    folder = tmp_path / "train-zh"
    folder.mkdir(exist_ok=True)
    for recipe in (REPO / "benchmarks" / "reproduce-arms").glob("*-*.yaml"):
        for d in yaml.safe_load(recipe.read_text())["datasets"]:
            (folder / d["path"]).touch()
    return {"files": {"sts": folder / "sts.jsonl"}}


def test_arm_recipes_are_yaml_files_with_the_shared_sizes_as_overrides(tmp_path):
    reproduce = _driver()
    arms = reproduce.arms_mod
    sz = reproduce.sizes(quick=False)
    negatives = arms.recipe_negatives()
    assert negatives == {"nli_negatives": 1, "bge_negatives": 3, "cls_negatives": 10} and all(sz[k] == v for k, v in negatives.items())
    for arm, spec in reproduce.ARMS.items():
        if spec["kind"] == "base":
            continue
        recipe = arms.arm_recipe(arm, 7, "bundled:all-MiniLM-L6-v2", _fake_data(tmp_path), sz, tmp_path / arm)
        t = recipe.training
        assert (t.max_steps, t.batch_size, t.learning_rate, t.seed, t.output_dir) == (sz["steps"], sz["batch"], sz["lr"], 7, str(tmp_path / arm)), arm
        assert recipe.model.max_seq_length == sz["max_seq_length"] and recipe.sampling.mixing == sz["mixing"], arm
        assert all(Path(d.path).parent == tmp_path / "train-zh" for d in recipe.datasets), arm
        for d in recipe.datasets:  # one negatives count per source kind, as the cache key and the static miner assume
            kind = "bge" if d.name.startswith("bge") else d.name.split("_")[0]
            if f"{kind}_negatives" in negatives and d.num_negatives:
                assert d.num_negatives == negatives[f"{kind}_negatives"], (arm, d.name)
    dynamic = arms.arm_recipe("zh-dynamic", 0, "bundled:all-MiniLM-L6-v2", _fake_data(tmp_path), sz, tmp_path / "d")
    assert (dynamic.mining.dynamic.every_steps, dynamic.mining.dynamic.pool_size) == (sz["every"], sz["mine_pool"])
    assert [a for a in reproduce.ARMS if arms.needs_mining(a)] == ["zh-static", "zh-dynamic"]


def test_a_cached_result_is_stale_once_its_arm_recipe_changes(tmp_path):
    """The cache compares the recipe a result trained (seed and output folder aside) with the arm's YAML today."""
    reproduce = _driver()
    arms = reproduce.arms_mod
    sz, data = reproduce.sizes(quick=True), _fake_data(tmp_path)
    data |= {"rows": {"sts": 1}, "suite": tmp_path / "suite.yaml"}
    expected = arms.expected_cache("zh-hybrid", "bundled:all-MiniLM-L6-v2", data, sz)
    trained = arms.arm_recipe("zh-hybrid", 1, "bundled:all-MiniLM-L6-v2", data, sz, tmp_path / "elsewhere").model_dump(mode="json")
    entry = {"plan": expected["plan"], "recipe": trained}
    assert arms.is_current(entry, expected)
    edited = json.loads(json.dumps(trained))
    edited["datasets"][2]["num_negatives"] = 2
    assert not arms.is_current(entry | {"recipe": edited}, expected)
    assert not arms.is_current({"plan": expected["plan"]}, expected)  # no recorded recipe: not reusable
    assert not arms.is_current(entry | {"plan": {**expected["plan"], "steps": 1}}, expected)


def test_full_slices_are_decontaminated_and_draw_enough_rows(tmp_path, shared_data):
    """The real slices (no training): every quota is met after decontamination, and replaying the
    trainer's sampler draws ≥ 15,000 rows for the arms whose duplicate-free batches can come out short."""
    reproduce = _driver()
    _needs_data(reproduce)
    sz = reproduce.sizes(quick=False)
    for lang in ("zh", "en"):
        data = reproduce.data_mod.prepare(lang, tmp_path / "data", sz["quotas"][lang])
        assert data["rows"] == sz["quotas"][lang] and data["suite"] == reproduce.data_mod.SUITES[lang]
        assert sum(data["dropped_for_overlap_with_eval"].values()) > 0
        eval_texts = reproduce.data_mod.suite_texts(data["suite"])
        for path in data["files"].values():
            for row in reproduce.data_mod.read_jsonl(path):
                assert not eval_texts & {t.strip() for t in reproduce.data_mod.row_texts(row)}
        for arm in (f"{lang}-infonce", f"{lang}-cosent"):
            recipe = reproduce.arms_mod.arm_recipe(arm, 0, "bundled:all-MiniLM-L6-v2", data, sz, tmp_path / arm)
            assert all(Path(d.path).is_file() for d in recipe.datasets), arm  # the recipe's relative paths name the sliced files
            assert reproduce.arms_mod.rows_drawn(recipe)["total"] >= reproduce.MIN_ROWS, arm


def test_quick_arms_leave_loadable_models_tables_png_json_and_cache(tmp_path, tiny_bert_dir, shared_data, capsys):
    reproduce = _driver()
    _needs_data(reproduce)
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "rq"
    argv = ["--quick", "--only", "zh-infonce,zh-hybrid", "--seeds", "0", "--steps", "2", "--backbone", str(tiny_bert_dir), "--out", str(out), "--threads", "1"]
    results = reproduce.main(argv)
    printed = capsys.readouterr().out
    assert "Table A-zh" in printed and "| zh-infonce | 0 |" in printed and "| zh-hybrid | 0 |" in printed
    for arm in ("zh-infonce", "zh-hybrid"):
        folder = out / "arms" / f"{arm}-s0"
        model = SentenceTransformer(str(folder / "model"), device="cpu")
        assert model.encode(["一架飞机正在起飞。"]).shape == (1, 768)  # the 384→768 (here 64→768) projection
        entry = json.loads((folder / "result.json").read_text())
        assert entry["train_log"][-1]["step"] == 2 and entry["rows_drawn"]["batches"] == 2
        assert entry["rows_drawn"]["total"] == 2 * 8 if arm == "zh-hybrid" else 2 <= entry["rows_drawn"]["total"] <= 2 * 8
        assert set(entry["eval"]["tasks"]) == {t["name"] for t in __import__("yaml").safe_load((REPO / "suites" / "zh-local.yaml").read_text())["tasks"]}
    saved = json.loads((out / "results.json").read_text())
    meta = saved["meta"]
    assert meta["sizes"]["steps"] == 2 and meta["seeds"] == [0]
    assert meta["dropped_for_overlap_with_eval"]["zh"]["sts"] > 0 and "sts (score < 4)" in meta["infonce_conversion_dropped"]["zh"]
    assert set(meta["arm_seconds"]) == {"zh-infonce-s0", "zh-hybrid-s0"} and meta["machine"] and meta["command"].startswith("python benchmarks/reproduce.py")
    assert [t["id"] for t in results["tables"]] == ["a_zh_loss_ablation"]
    for table in results["tables"]:
        assert (out / table["png"]).read_bytes()[:4] == b"\x89PNG"
    assert (out / "tables.md").read_text().count("## Table") == 1
    # a second invocation reuses the cached arms instead of training again
    reproduce.main(argv)
    assert capsys.readouterr().out.count("cached:") == 2


def test_quick_stock_arm(tmp_path, tiny_bert_dir, shared_data, capsys):
    reproduce = _driver()
    _needs_data(reproduce)
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "rq"
    reproduce.main(["--quick", "--only", "zh-stock", "--steps", "2", "--backbone", str(tiny_bert_dir), "--out", str(out), "--threads", "1"])
    printed = capsys.readouterr().out
    assert "Table A-zh" in printed and "| zh-stock | 0 |" in printed
    folder = out / "arms" / "zh-stock-s0"
    assert SentenceTransformer(str(folder / "model"), device="cpu").encode(["一架飞机正在起飞。"]).shape == (1, 768)
    entry = json.loads((folder / "result.json").read_text())
    assert entry["kind"] == "stock" and entry["rows_drawn"]["batches"] == 2 and 2 <= entry["rows_drawn"]["total"] <= 2 * 8
    assert {"zh-stsb-dev", "tnews-fewclue", "cmrc2018-retrieval"} <= set(entry["eval"]["tasks"])
