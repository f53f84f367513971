"""`hybridembed push MODEL REPO`: upload a trained model folder to the Hugging Face hub with sentence-transformers' `push_to_hub`.

What this adds: the upload is the folder as trained (model card, `recipe.yaml`, `hybridembed.json`,
training log) without what only resuming needs — checkpoints, TensorBoard events, stage folders.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from hybridembed.commands import add_trust_remote_code
from hybridembed.errors import HybridembedError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a trained model folder to the Hugging Face hub",
        description="Upload MODEL (a trained folder) to the hub repository REPO (created if missing). Checkpoints, "
        "TensorBoard events and stage folders stay behind; everything else goes as it is.",
    )
    parser.add_argument("model", help="trained model folder (a sentence-transformers folder)")
    parser.add_argument("repo", help="hub repository id, e.g. my-org/my-embedder")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (created if missing)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to the branch")
    parser.add_argument("--commit-message", help="commit message (default: sentence-transformers')")
    parser.add_argument("--token-env", default="HF_TOKEN", help="environment variable holding the hub token (default: HF_TOKEN; unset: the cached login)")
    add_trust_remote_code(parser)
    parser.set_defaults(func=run)


def uploadable_files(folder: Path) -> list[Path]:
    """The files of a trained folder that belong on the hub, relative to it."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from hybridembed.model_folder import STAGE_MARKER as MARKER

    def left_behind(path: Path) -> bool:
        top = folder / path.relative_to(folder).parts[0]
        return top.is_dir() and (top.name == "runs" or top.name.startswith(PREFIX_CHECKPOINT_DIR) or (top / MARKER).is_file())

    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and not left_behind(p))


def run(args: argparse.Namespace) -> int:
    folder = Path(args.model)
    if not (folder / "modules.json").is_file():
        raise HybridembedError(f"{folder}: not a sentence-transformers model folder (no modules.json)")
    from hybridembed.modeling.model import load_model

    model = load_model(str(folder), device="cpu", trust_remote_code=args.trust_remote_code)
    token = os.environ.get(args.token_env) or None
    files = uploadable_files(folder)
    with tempfile.TemporaryDirectory(prefix="hybridembed-push-") as staging:
        for relative in files:
            (Path(staging) / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / relative, Path(staging) / relative)
        try:
            url = model.push_to_hub(
                args.repo, token=token, private=args.private or None, commit_message=args.commit_message,
                local_model_path=staging, exist_ok=True, revision=args.revision, create_pr=args.create_pr,
            )  # fmt: skip
        except OSError as err:  # hub errors (HTTP, auth, offline) are OSError subclasses in huggingface_hub
            raise HybridembedError(f"push to {args.repo} failed: {str(err).splitlines()[0]}") from None
    print(f"pushed {len(files)} files from {folder} to {url}")
    return 0
