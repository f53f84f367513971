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
STS_TRAIN_ROWS = 1200
BANKING_ROWS = 1000


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_tsv(path: Path, rows: list[dict[str, str]], fields: list[str]) -> None:
    # STS-B's own layout: tab-separated, no quoting (texts contain quotes but never tabs).
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(fields) + "\n")
        f.writelines("\t".join(row[k] for k in fields) + "\n" for row in rows)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    sts = read_tsv(SRC / "en/stsb/train.tsv")
    rng.shuffle(sts)
    write_tsv(OUT / "stsb_train.tsv", sts[:STS_TRAIN_ROWS], ["sentence1", "sentence2", "score"])
    # Paraphrase-level pairs from the rest of STS-B train become retrieval-style (query, positive) rows.
    with open(OUT / "stsb_paraphrase_pairs.jsonl", "w", encoding="utf-8") as f:
        for row in sts[STS_TRAIN_ROWS:]:
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
