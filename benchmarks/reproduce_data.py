"""The reproduction driver's data: training sources read from ../shared/data, decontaminated against the evaluation suites, sliced once with a fixed seed, and written as one file per dataset view the arms train on.

Every language has the same shape of sources: ``sts`` (scored pairs, 0–5), ``pcls`` (0/1 pairs),
``cls_<name>`` (text, label text) classification sets, and for Chinese the ``nli`` and ``bge``
triplets. A training row sharing any text with any text of the suite's scored files is dropped
(counted per source). Each source is then sliced once (seed 0, whatever the training seed), so
every arm of a language trains on the same rows; the views differ only in how a row is routed
(InfoNCE-only arms keep STS pairs scored ≥ 4 and label-1 pairs, counted as ``infonce_dropped``).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
SUITES = {"zh": REPO / "suites" / "zh-local.yaml", "en": REPO / "suites" / "en-local.yaml"}
TEXT_ROLES = ("text1", "text2", "text", "query", "document", "positive", "negative")
SLICE_SEED = 0
# Label texts: Chinese names where the file carries only an English/coded label (the rest use their own text field).
EPRSTMT_LABELS = {"Positive": "正面", "Negative": "负面"}
TREC_COARSE = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human", "LOC": "location", "NUM": "number"}
TREC_FINE = {
    "abb": "abbreviation", "exp": "expansion", "cremat": "creative work", "dismed": "disease or medicine", "instru": "instrument",
    "lang": "language", "techmeth": "technique or method", "termeq": "equivalent term", "veh": "vehicle", "def": "definition",
    "desc": "description", "gr": "group", "ind": "individual", "mount": "mountain", "dist": "distance", "ord": "order",
    "perc": "percentage", "temp": "temperature", "volsize": "volume or size",
}  # fmt: skip
SST2_LABELS = {"0": "negative", "1": "positive"}


# ---------------------------------------------------------------- small helpers


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def tsv(path: Path, header: bool = False) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return lines[1:] if header else lines


def seeded(rows: list[Any], n: int, seed: int) -> list[Any]:
    """A seeded subset of n rows in a seeded order (all rows, shuffled, when n ≥ len)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:n]


def row_texts(row: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key in ("text1", "text2", "text", "query", "positives", "negatives"):
        value = row.get(key)
        out.extend(value if isinstance(value, list) else [value] if isinstance(value, str) else [])
    return out


# ---------------------------------------------------------------- evaluation texts, suites


def suite_texts(suite_path: Path) -> set[str]:
    """Every text of every file the suite scores (whole files, before any max_samples), stripped.

    A classification task's `train_path` (the few-shot set mteb fits its logistic regression on) is
    not scored and is not counted: the training sets of classification tasks are training data,
    as in Piccolo2, which fine-tunes on C-MTEB's training splits.
    """
    from hybridembed.evaluation import load_suite
    from hybridembed.evaluation.local_data import read_beir, read_columns

    texts: set[str] = set()
    for spec in load_suite(suite_path).tasks:
        if spec.is_named:
            continue
        if spec.resolved_format == "beir":
            data = read_beir(spec)
            texts.update(data.corpus.values())
            texts.update(data.queries.values())
            continue
        for row in read_columns(spec):
            for role in TEXT_ROLES:
                value = row.get(role)
                texts.update(value if isinstance(value, list) else [value] if isinstance(value, str) else [])
    return {t.strip() for t in texts if isinstance(t, str) and t.strip()}


def eval_suite(lang: str, work: Path, max_samples: int | None, max_corpus: int | None) -> tuple[Path, bool]:
    """The shipped suite file itself, or (with max_samples) a generated copy with smaller `max_samples` keys; (path, subsampled)."""
    if not max_samples:
        return SUITES[lang], False
    import yaml

    from hybridembed.evaluation import load_suite

    suite = load_suite(SUITES[lang])
    tasks = []
    for spec in suite.tasks:
        task = spec.model_dump(mode="json", exclude_defaults=True)
        task["max_samples"] = min(spec.max_samples or max_samples, max_samples)
        if spec.resolved_format == "beir" and max_corpus:
            task["max_corpus"] = min(spec.max_corpus or max_corpus, max_corpus)
        tasks.append(task)
    out = work / "eval" / f"{suite.name}-subsample.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump({"name": f"{suite.name}-subsample", "tasks": tasks}, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out, True


class Decontaminator:
    """Drops training rows that share a text with any evaluation text, counting the drops per source."""

    def __init__(self, eval_texts: set[str]) -> None:
        self.eval_texts = eval_texts
        self.dropped: dict[str, int] = {}
        self.read: dict[str, int] = {}

    def keep(self, name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = [r for r in rows if not any(t.strip() in self.eval_texts for t in row_texts(r))]
        self.read[name] = len(rows)
        self.dropped[name] = len(rows) - len(out)
        return out


# ---------------------------------------------------------------- sources


def _pairs(rows: list[list[str]], cols: tuple[int, int, int] = (0, 1, 2)) -> list[dict[str, Any]]:
    a, b, s = cols
    return [{"text1": r[a], "text2": r[b], "score": float(r[s])} for r in rows if len(r) > max(cols) and r[a].strip() and r[b].strip()]


def zh_sources() -> dict[str, list[dict[str, Any]]]:
    """Chinese training rows by source, canonical shape (scored pairs, triplets, or text + label)."""
    zh = DATA / "zh"
    src: dict[str, list[dict[str, Any]]] = {"sts": _pairs(tsv(zh / "stsb" / "train.tsv"))}
    bustm = [{"text1": r["sentence1"], "text2": r["sentence2"], "score": float(r["label"])} for r in read_jsonl(zh / "fewclue_bustm" / "train_few_all.jsonl")]
    src["pcls"] = _pairs(tsv(zh / "afqmc" / "train.tsv")) + bustm  # AFQMC train + FewCLUE BUSTM train (both 0/1 pairs)
    nli: dict[str, dict[str, list[str]]] = {}
    for rel in ("cmnli/dev.tsv", "csnli/dev.tsv", "csnli/test.tsv"):  # cmnli test has no labels; OCNLI is evaluation only
        for r in tsv(zh / rel):
            if len(r) >= 3 and r[2] in ("entailment", "contradiction"):
                entry = nli.setdefault(r[0], {"entailment": [], "contradiction": []})
                if r[1] not in entry[r[2]]:
                    entry[r[2]].append(r[1])
    src["nli"] = [{"query": p, "positives": e["entailment"], "negatives": e["contradiction"]} for p, e in nli.items() if e["entailment"] and e["contradiction"]]
    src["bge"] = [
        {"query": r["query"], "positives": r["pos"], "negatives": r["neg"]} for r in read_jsonl(zh / "retrieval" / "bge_finetune_data.jsonl") if r.get("pos")
    ]
    tnews_zh = {str(r["label"]): r["label_zh"] for r in read_jsonl(zh / "fewclue_tnews" / "label_index2en2zh.jsonl")}
    src["cls_tnews"] = [{"text": r["sentence"], "label": tnews_zh[str(r["label"])]} for r in read_jsonl(zh / "fewclue_tnews" / "train_few_all.jsonl")]
    src["cls_iflytek"] = [{"text": r["sentence"], "label": r["label_des"]} for r in read_jsonl(zh / "fewclue_iflytek" / "train_few_all.jsonl")]
    src["cls_csldcp"] = [{"text": r["content"], "label": r["label"]} for r in read_jsonl(zh / "fewclue_csldcp" / "train_few_all.jsonl")]
    src["cls_eprstmt"] = [{"text": r["sentence"], "label": EPRSTMT_LABELS[r["label"]]} for r in read_jsonl(zh / "fewclue_eprstmt" / "train_few_all.jsonl")]
    return src


def _trec_label(code: str) -> str:
    coarse, fine = code.split(":", 1)
    return f"{TREC_COARSE[coarse]}: {TREC_FINE.get(fine, fine)}"


def en_sources() -> dict[str, list[dict[str, Any]]]:
    """English training rows by source (STS-B train, MRPC train, Banking77 / TREC / SST-2 train)."""
    en = DATA / "en"
    src: dict[str, list[dict[str, Any]]] = {"sts": _pairs(tsv(en / "stsb" / "train.tsv", header=True))}
    src["pcls"] = _pairs(tsv(en / "mrpc" / "train.tsv"), cols=(3, 4, 0))
    with open(en / "banking77" / "train.csv", encoding="utf-8") as f:
        src["cls_banking77"] = [{"text": r["text"], "label": r["category"].replace("_", " ")} for r in csv.DictReader(f)]
    with open(en / "trec" / "train.txt", encoding="latin-1") as f:
        lines = [line.rstrip("\n").split(" ", 1) for line in f if line.strip()]
    src["cls_trec"] = [{"text": t, "label": _trec_label(code)} for code, t in lines]
    with open(en / "sst2" / "train.txt", encoding="utf-8") as f:
        lines = [line.rstrip("\n").split(" ", 1) for line in f if line.strip()]
    src["cls_sst2"] = [{"text": t, "label": SST2_LABELS[code]} for code, t in lines]
    return src


# ---------------------------------------------------------------- the slice and its views


def prepare(lang: str, work: Path, quotas: dict[str, int], eval_max_samples: int | None = None, eval_max_corpus: int | None = None) -> dict[str, Any]:
    """Decontaminate, slice and write one language's training views; returns files, counts and the suite to evaluate."""
    suite, subsampled = eval_suite(lang, work, eval_max_samples, eval_max_corpus)
    dec = Decontaminator(suite_texts(SUITES[lang]))  # always against the whole shipped suite
    sources = zh_sources() if lang == "zh" else en_sources()
    sliced: dict[str, list[dict[str, Any]]] = {}
    for i, (name, rows) in enumerate(sources.items()):
        if name not in quotas:
            continue
        sliced[name] = seeded(dec.keep(name, rows), quotas[name], SLICE_SEED + i)
    tr = work / f"train-{lang}"
    files: dict[str, Path] = {}
    files["sts"] = write_jsonl(tr / "sts.jsonl", sliced["sts"])
    files["pcls"] = write_jsonl(tr / "pcls.jsonl", sliced["pcls"])
    # InfoNCE-only conversions (Piccolo2's baseline): high-score STS pairs and label-1 pairs → (query, positive)
    sts_pairs = [{"query": r["text1"], "positive": r["text2"]} for r in sliced["sts"] if r["score"] >= 4.0]
    pcls_pairs = [{"query": r["text1"], "positive": r["text2"]} for r in sliced["pcls"] if r["score"] >= 1.0]
    files["sts_pairs"] = write_jsonl(tr / "sts_pairs.jsonl", sts_pairs)
    files["pcls_pairs"] = write_jsonl(tr / "pcls_pairs.jsonl", pcls_pairs)
    cls_names = [n for n in sliced if n.startswith("cls_")]
    for name in cls_names:
        files[name] = write_jsonl(tr / f"{name}.jsonl", sliced[name])
    # (text, label text) retrieval pairs with in-batch negatives: one file for all classification sources,
    # so that a batch (duplicate-free: one row per label) fills up even for a 2-label source.
    merged = seeded([{"query": r["text"], "positive": r["label"]} for n in cls_names for r in sliced[n]], 10**9, SLICE_SEED)
    files["cls_pairs"] = write_jsonl(tr / "cls_pairs.jsonl", merged)
    for name in ("nli", "bge"):
        if name in sliced:
            files[name] = write_jsonl(tr / f"{name}.jsonl", sliced[name])
    rows = {name: len(r) for name, r in sliced.items()}
    return {
        "lang": lang,
        "suite": suite,
        "suite_subsampled": subsampled,
        "files": files,
        "rows": rows,
        "rows_total": sum(rows.values()),
        "read": dec.read,
        "dropped_for_overlap_with_eval": dec.dropped,
        "infonce_dropped": {"sts (score < 4)": len(sliced["sts"]) - len(sts_pairs), "pcls (label 0)": len(sliced["pcls"]) - len(pcls_pairs)},
        "cls_labels": {n: len({r["label"] for r in sliced[n]}) for n in cls_names},
    }


def mine_pool(work: Path, backbone: str, data: dict[str, Any], sz: dict[str, Any]) -> dict[str, Path]:
    """zh-static / zh-dynamic: the sliced bge rows with negatives mined offline by the base model (once, cached).

    The corpus: every positive of the sliced rows plus a seeded sample of other training texts (their
    own bge negatives, STS-B train sentences). `pool` keeps the hardest `mine_pool` candidates of ranks
    `mine_range` (dynamic mining's candidate pool); `static` keeps the first `bge_negatives` of each
    pool — the negatives dynamic mining starts from — fixed for the whole run.
    """
    tr = work / "train-zh"
    pool_path, static_path = tr / "bge_mined_pool.jsonl", tr / "bge_mined_static.jsonl"
    report_path = tr / "bge_mined_report.json"
    key = {
        "backbone": backbone,
        "rows": data["rows"],
        **{k: sz[k] for k in ("mine_corpus", "mine_range", "mine_pool", "mine_max_ratio", "bge_negatives", "max_seq_length")},
    }
    key = json.loads(json.dumps(key))
    previous = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    if not (pool_path.exists() and static_path.exists() and previous.get("key") == key):
        from hybridembed.mining.offline import MiningOptions, load_queries, mine_hard_negatives
        from hybridembed.modeling.model import load_model

        rows = read_jsonl(data["files"]["bge"])
        positives = list(dict.fromkeys(p for r in rows for p in r["positives"]))
        others = list(
            dict.fromkeys([n for r in rows for n in r["negatives"]] + [t for r in read_jsonl(data["files"]["sts"]) for t in (r["text1"], r["text2"])])
        )
        others = [t for t in others if t not in set(positives)]
        corpus = positives + seeded(others, max(0, sz["mine_corpus"] - len(positives)), SLICE_SEED)
        model = load_model(backbone)
        model.max_seq_length = sz["max_seq_length"]
        options = MiningOptions(rank_range=tuple(sz["mine_range"]), num_negatives=sz["mine_pool"], sampling="top", max_ratio=sz["mine_max_ratio"], seed=0)
        report = mine_hard_negatives(
            model, load_queries(data["files"]["bge"]), pool_path, corpus=corpus, options=options, cache_dir=work / "cache", progress=False
        )
        mined = read_jsonl(pool_path)
        write_jsonl(static_path, [{"query": r["query"], "positives": r["positives"], "negatives": r["negatives"][: sz["bge_negatives"]]} for r in mined])
        summary = {
            "key": key, "rows": report.rows, "corpus": report.corpus_size, "negatives_written": report.negatives_written,
            "short_rows": report.short_rows, "empty_rows": report.empty_rows, "dropped_by_guard": report.dropped_by_guard,
            "embed_seconds": round(report.embed_seconds, 1), "search_seconds": round(report.search_seconds, 1), "notes": report.notes,
        }  # fmt: skip
        report_path.write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
        print(
            f"mined {report.negatives_written} negatives for {report.rows} rows from {report.corpus_size} texts: {'; '.join(report.notes) or 'ok'}", flush=True
        )
    data["mining"] = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    return {"bge_pool": pool_path, "bge_static": static_path}


def mining_report(work: Path) -> dict[str, Any]:
    """The summary mine_pool wrote (an earlier invocation's, when the mined files are cached); {} before any mining."""
    path = work / "train-zh" / "bge_mined_report.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
