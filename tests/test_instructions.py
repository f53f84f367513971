"""`hybridembed data from-instructions`: alpaca, ShareGPT and OpenAI chat → (query, positive) pairs, each filter counted, bad input named by file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

LONG = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the chloroplasts of plant cells."


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from hybridembed.cli import main

    code = main(["data", "from-instructions", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _counts(out: str) -> dict[str, int]:
    return {k.strip(): int(v) for k, v in (line.split(":") for line in out.splitlines() if line.startswith("  "))}


def _written(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_alpaca_json_array_with_every_filter_counted(tmp_path, capsys):
    records = [
        {"instruction": "Explain photosynthesis.", "input": "", "output": LONG},
        {"instruction": "Summarize", "input": "The cat sat on the mat all day long.", "output": "A cat spent the whole day sitting on a mat."},
        {"instruction": "explain   PHOTOSYNTHESIS.", "input": "", "output": LONG.upper()},  # exact duplicate after normalization
        {"instruction": "Explain photosynthesis.", "input": "", "output": LONG.replace("cells.", "cells!")},  # near duplicate
        {"instruction": "Hi", "input": "", "output": "Hello."},  # response too short
        {"instruction": "Write a poem.", "input": "", "output": "x" * 9000},  # too long
        {"instruction": "How do I pick a lock?", "input": "", "output": "I'm sorry, but I can't help with that request."},
        {"instruction": "As an exercise, define entropy.", "input": "", "output": "As an AI language model, I have no opinions, but entropy measures disorder."},
        *({"instruction": f"Question number {i}?", "input": "", "output": "Thank you for your question! Let me know if you need anything else."} for i in range(3)),
        {"instruction": "Translate to French", "input": "good morning", "output": "Bonjour, comment allez-vous aujourd'hui ?"},
    ]  # fmt: skip
    source = tmp_path / "alpaca.json"
    source.write_text(json.dumps(records, indent=2))
    code, out, err = _cli(capsys, str(source), "--out", str(tmp_path / "pairs.jsonl"))
    assert code == 0, err
    assert _counts(out) == {"too short": 1, "too long": 1, "refusal": 2, "templated reply": 3, "language": 0,
                            "exact duplicate": 1, "near duplicate": 1}  # fmt: skip
    assert "read 12 records (12 pairs)" in out and "wrote 3 pairs" in out
    pairs = _written(tmp_path / "pairs.jsonl")
    assert pairs[0] == {"query": "Explain photosynthesis.", "positive": LONG}
    assert pairs[1]["query"] == "Summarize\n\nThe cat sat on the mat all day long."  # instruction + input
    # The output is a retrieval dataset hybridembed trains on as is.
    from hybridembed.data import load_dataset
    from hybridembed.recipe import DatasetConfig

    assert len(load_dataset(DatasetConfig(path=str(tmp_path / "pairs.jsonl"), task="retrieval"))) == 3


def test_sharegpt_and_openai_chat_turns_and_language_filter(tmp_path, capsys):
    share = tmp_path / "sharegpt.jsonl"
    share.write_text(
        "\n".join(
            json.dumps(r, ensure_ascii=False)
            for r in [
                {
                    "conversations": [
                        {"from": "system", "value": "You are helpful."},
                        {"from": "human", "value": "什么是光合作用？"},
                        {"from": "gpt", "value": "光合作用是植物利用光能把二氧化碳和水转化为糖和氧气的过程。"},
                        {"from": "human", "value": "它发生在哪里？"},
                        {"from": "gpt", "value": "它主要发生在植物细胞的叶绿体中。"},
                    ]
                },
                {
                    "conversations": [
                        {"from": "human", "value": "What is the capital of France?"},
                        {"from": "gpt", "value": "The capital of France is Paris, on the Seine."},
                    ]
                },
            ]  # fmt: skip
        )
    )
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "为什么天空是蓝色的？"}]},
                    {"role": "assistant", "content": "因为大气中的分子对短波长的蓝光散射得更强烈。"},
                ]
            },
            ensure_ascii=False,
        )  # fmt: skip
    )
    out_path = tmp_path / "zh.jsonl"
    code, out, err = _cli(capsys, str(share), str(chat), "--out", str(out_path), "--language", "zh")
    assert code == 0, err
    assert _counts(out)["language"] == 1 and "wrote 2 pairs" in out
    assert [p["query"] for p in _written(out_path)] == ["什么是光合作用？", "为什么天空是蓝色的？"]
    code, out, _ = _cli(capsys, str(share), "--out", str(out_path), "--turns", "all")
    assert code == 0 and "read 2 records (3 pairs)" in out
    assert "它发生在哪里？" in [p["query"] for p in _written(out_path)]


def test_bad_input_names_file_line_and_field_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            [
                json.dumps({"instruction": "ok", "output": "a fine answer here"}),
                json.dumps({"instruction": "count", "output": 3}),
                json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}]}),
                json.dumps({"messages": "not a list"}),
                json.dumps({"prompt": "x", "completion": "y"}),
            ]
        )
    )
    out_path = tmp_path / "never.jsonl"
    code, _, err = _cli(capsys, str(bad), "--out", str(out_path))
    assert code == 2
    assert f"{bad}:2: output: expected text, got int" in err
    assert f"{bad}:3: conversations[1].from: unknown role 'robot'" in err
    assert f"{bad}:4: messages: expected a non-empty list of turns" in err
    assert f"{bad}:5: (record): not alpaca" in err
    assert not out_path.exists()


def test_minhash_estimates_jaccard():
    from hybridembed.data.pair_filters import MinHasher

    hasher = MinHasher(num_perm=128)
    a = hasher.signature(LONG)
    assert (a == hasher.signature(LONG.replace("sugar", "sugars"))).mean() > 0.8
    assert (a == hasher.signature("A completely different sentence about trains and stations.")).mean() < 0.2


@pytest.mark.parametrize("text,language,expected", [("光合作用", "zh", 1.0), ("Hello world", "zh", 0.0), ("Привет мир", "ru", 1.0)])
def test_script_share(text, language, expected):
    from hybridembed.data.pair_filters import LANGUAGE_SCRIPTS, script_share

    assert script_share(text, LANGUAGE_SCRIPTS[language]) == expected
