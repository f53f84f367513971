"""training.keep_freed_memory: glibc keeps freed large blocks, so a step's big tensors reuse the last step's pages (no new faults)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from helpers import REPO

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or "LD_PRELOAD" in os.environ, reason="glibc's malloc only")

# Eight rounds of attention forward and backward at 512 tokens (its probabilities are 50 MB, above
# glibc's largest mmap threshold); print the page faults of rounds 2–8, after the first round has
# warmed whatever the allocator keeps. (A single round is not enough: the heap's layout decides
# whether one or two of a round's tensors still need new pages.)
FAULTS = """
import resource, sys, torch
from hybridembed.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
q = torch.randn(4, 12, 512, 32, requires_grad=True)
for round in range(8):
    if round == 1:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    probabilities = torch.softmax(q @ q.transpose(-2, -1), dim=-1)
    torch.nn.functional.dropout(probabilities, 0.1).matmul(q).sum().backward()
    del probabilities
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    applied, count = done.stdout.split()
    return applied, int(count)


@glibc_only
def test_freed_large_blocks_are_reused_without_new_page_faults():
    applied, kept = faults("keep")
    assert applied == "True"
    _, fresh = faults("default")
    assert fresh > 7 * 10_000  # each 50 MB tensor is 12k pages of 4 KB: glibc maps them afresh every round
    assert kept < fresh / 3, (kept, fresh)  # measured here over rounds 2–8: 49–111k against ~610k


def test_keep_freed_memory_is_a_no_op_under_another_allocator(monkeypatch):
    import hybridembed.allocator as allocator

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator, "_applied", None)  # the next caller in this process asks again


def test_keep_freed_memory_leaves_multi_process_runs_alone(monkeypatch):
    import hybridembed.allocator as allocator

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator, "_applied", None)


def test_the_recipe_setting_is_on_by_default_and_can_be_turned_off():
    from hybridembed.recipe import load_recipe

    quickstart = REPO / "recipes" / "quickstart.yaml"
    assert load_recipe(quickstart).training.keep_freed_memory is True
    assert load_recipe(quickstart, {"training.keep_freed_memory": False}).training.keep_freed_memory is False


@pytest.mark.parametrize("keep", [True, False])
def test_prepare_training_applies_the_setting(keep, tiny_bert_dir, tmp_path, monkeypatch):
    import json

    import hybridembed.training.builder as builder
    from hybridembed.recipe import Recipe

    calls = []
    monkeypatch.setattr(builder, "keep_freed_memory", lambda: calls.append(True) or True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": f"question {i}", "positive": f"answer {i}"}) + "\n" for i in range(8)))
    recipe = Recipe.model_validate(
        {
            "model": {"backbone": str(tiny_bert_dir), "max_seq_length": 16},
            "datasets": [{"path": str(data), "task": "retrieval", "batch_size": 4}],
            "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "report_to": [], "keep_freed_memory": keep},
        }
    )
    builder.prepare_training(recipe)
    assert calls == ([True] if keep else [])


@pytest.mark.parametrize("flag, applied", [([], True), (["--no-keep-freed-memory"], False)])
def test_encode_applies_the_setting_unless_told_not_to(flag, applied, tiny_model_dir, tmp_path, monkeypatch, capsys):
    import hybridembed.allocator as allocator
    from hybridembed.cli import main

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(True) or True)
    source = tmp_path / "texts.txt"
    source.write_text("one text\nanother text\n")
    assert main(["encode", str(tiny_model_dir), "--input", str(source), "--output", str(tmp_path / "out.npy"), *flag]) == 0
    assert calls == ([True] if applied else [])


def test_installed_tcmalloc_and_the_preloaded_allocator_are_found(monkeypatch, tmp_path):
    import hybridembed.allocator as allocator

    library = tmp_path / "libtcmalloc_minimal.so.4"
    monkeypatch.setattr(allocator, "TCMALLOC_PATHS", (str(tmp_path / "missing.so"), str(library)))
    assert allocator.installed_tcmalloc() is None
    library.write_bytes(b"")
    assert allocator.installed_tcmalloc() == str(library)
    monkeypatch.setenv("LD_PRELOAD", f"/lib/other.so:{library}")
    assert allocator.preloaded_allocator() == "tcmalloc"
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert allocator.preloaded_allocator() == "jemalloc"
    monkeypatch.delenv("LD_PRELOAD")
    assert allocator.preloaded_allocator() is None
