"""`hybridembed push`: what a trained folder uploads (checkpoints and events stay behind); only the network calls are faked."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture()
def trained_folder(tmp_path, tiny_model_dir) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "recipe.yaml").write_text("model: {}\n")
    (folder / "hybridembed.json").write_text("{}")
    for left_behind in ("checkpoint-3/optimizer.pt", "runs/events.out", "stage1-pairs/stage_done.json", "stage1-pairs/model.safetensors"):
        (folder / left_behind).parent.mkdir(parents=True, exist_ok=True)
        (folder / left_behind).write_text("x")
    return folder


def test_push_uploads_the_model_files_and_leaves_checkpoints_events_and_stages(trained_folder, monkeypatch, capsys):
    import huggingface_hub

    from hybridembed.cli import main

    calls: dict = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return SimpleNamespace(repo_id=f"me/{repo_id}" if "/" not in repo_id else repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        calls["upload"] = (repo_id, kwargs)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    code = main(["push", str(trained_folder), "my-embedder", "--private", "--commit-message", "first"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert calls["create"][0] == "my-embedder" and calls["create"][1]["private"] is True
    assert calls["upload"][0] == "me/my-embedder" and calls["upload"][1]["commit_message"] == "first"
    files = calls["files"]
    assert {"modules.json", "config.json", "model.safetensors", "recipe.yaml", "hybridembed.json"} <= set(files)
    assert not any(f.startswith(("checkpoint-", "runs/", "stage1-pairs/")) for f in files)
    assert "https://huggingface.co/me/my-embedder" in out


def test_push_offline_or_refused_is_one_line_and_exit_nonzero(trained_folder, tmp_path, monkeypatch, capsys):
    from hybridembed.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["push", str(trained_folder), "me/x"])
    err = capsys.readouterr().err.strip()  # above the message: transformers' weight-loading progress bar
    assert code != 0 and "Traceback" not in err and err.splitlines()[-1].startswith("error: push to me/x failed: ")
    assert "offline" in err.splitlines()[-1]
    code = main(["push", str(tmp_path), "me/x"])
    assert code != 0 and "not a sentence-transformers model folder" in capsys.readouterr().err
