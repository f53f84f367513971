"""Regenerate data/quickstart/ (small real subsets shipped with the repo) from ../shared/data."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO.parent / "shared" / "data"
OUT = REPO / "data" / "quickstart"
STS_TRAIN_ROWS = 1200  # the first rows of stsb_train.tsv stay those of earlier releases (tests read a prefix)
STS_HOLDOUT_ROWS = 1500  # STS-B train pairs kept out of data/quickstart: the tuning split of benchmarks/quickstart_tuning.py
BANKING_ROWS = 1000


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_tsv(path: Path, rows: list[dict[str, str]], fields: list[str]) -> None:
    # STS-B's own layout: tab-separated, no quoting (texts contain quotes but never tabs).
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(fields) + "\n")
        f.writelines("\t".join(row[k] for k in fields) + "\n" for row in rows)


def split_stsb_train(rows: list[dict[str, str]], rng: random.Random) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """STS-B train → (shipped training rows, tuning holdout), shuffled by `rng` (random.Random(0) in main).

    The holdout is a uniform sample of the whole score range (scores 0–5), so settings chosen on it
    are chosen on data of the training distribution that the quickstart never trains on."""
    sts = list(rows)
    rng.shuffle(sts)
    head, tail = sts[:STS_TRAIN_ROWS], sts[STS_TRAIN_ROWS:]
    held = set(random.Random(1).sample(range(len(tail)), STS_HOLDOUT_ROWS))
    return head + [r for i, r in enumerate(tail) if i not in held], [r for i, r in enumerate(tail) if i in held]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    train, _holdout = split_stsb_train(read_tsv(SRC / "en/stsb/train.tsv"), rng)
    write_tsv(OUT / "stsb_train.tsv", train, ["sentence1", "sentence2", "score"])
    # The paraphrase-level pairs of the shipped STS rows (score >= 4) double as retrieval-style (query, positive)
    # rows: the same supervision seen by InfoNCE with in-batch negatives.
    with open(OUT / "stsb_paraphrase_pairs.jsonl", "w", encoding="utf-8") as f:
        for row in train[STS_TRAIN_ROWS:]:
            if float(row["score"]) >= 4.0:
                f.write(json.dumps({"query": row["sentence1"], "positive": row["sentence2"]}, ensure_ascii=False) + "\n")
    shutil.copy(SRC / "en/stsb/dev.tsv", OUT / "stsb_dev.tsv")
    with open(SRC / "en/banking77/train.csv", encoding="utf-8", newline="") as f:
        banking = list(csv.DictReader(f))
    rng.shuffle(banking)
    with open(OUT / "banking77_train.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(banking[:BANKING_ROWS])
    # FlagEmbedding's own example rows (query/pos/neg), kept in their original format.
    with open(OUT / "flagembedding_retrieval.jsonl", "w", encoding="utf-8") as out:
        for name in ("msmarco", "nq", "nli"):
            out.write((SRC / f"en/flagembedding_example/retrieval/{name}.jsonl").read_text(encoding="utf-8").rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
