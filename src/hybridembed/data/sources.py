"""Where a dataset's raw records come from: a local file or save_to_disk folder, or a Hugging Face hub dataset named `hf:owner/name`.

A hub entry is read with `datasets.load_dataset(name, config, split=, revision=)`. Offline
(`HF_HUB_OFFLINE=1`, as on a cluster without internet) it is read from the local hub cache —
the snapshot `huggingface-cli download --repo-type dataset` or an earlier online run left there —
and failing that from `datasets`' own cache, with a message naming what to download when neither
holds it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridembed.data.arrow_store import content_hash
from hybridembed.data.readers import RawRecord, is_line_numbered, missing_file, read_records
from hybridembed.errors import DataError
from hybridembed.recipe import DatasetConfig

HUB_PREFIX = "hf:"


@dataclass
class RecordSource:
    label: str  # how messages name the source: a path, or hf:owner/name (split)
    where: str  # "" for line-numbered text files, "row " for binary formats and hub datasets
    stem: str  # the dataset's default name
    identity: Callable[[], str]  # what the validated rows depend on: the file's bytes, the hub snapshot
    records: Callable[[], Iterator[RawRecord]]


def is_hub(path: str) -> bool:
    return path.startswith(HUB_PREFIX)


def open_source(cfg: DatasetConfig) -> RecordSource:
    if is_hub(cfg.path):
        return _hub_source(cfg)
    path = Path(cfg.path)
    if not path.exists():
        raise DataError([missing_file(path)])
    where = "" if is_line_numbered(path) else "row "
    return RecordSource(str(path), where, path.stem, lambda: content_hash(path), lambda: read_records(path, header=cfg.header))


def _hub_source(cfg: DatasetConfig) -> RecordSource:
    name = cfg.path[len(HUB_PREFIX) :]
    if name.count("/") != 1 or not all(name.split("/")):
        raise DataError([f"{cfg.path}: a hub dataset is named hf:owner/name"])
    split = cfg.split or "train"
    label = f"{cfg.path} ({'/'.join(filter(None, [cfg.config, split]))})"
    state: dict[str, Any] = {}

    def dataset():
        if "dataset" not in state:
            state["dataset"] = load_hub_dataset(name, cfg.config, split, cfg.revision, label)
        return state["dataset"]

    def identity() -> str:
        # load_dataset's Arrow files are named by the fingerprint of what it read (revision, data
        # files); their names and sizes change when the dataset does.
        files = [(Path(f["filename"]).name, os.path.getsize(f["filename"])) for f in dataset().cache_files]
        if not files:  # an in-memory dataset has nothing to key on: validate it every time
            return f"{cfg.path}|uncached|{uuid.uuid4().hex}"
        return f"{cfg.path}|{cfg.config}|{split}|{cfg.revision}|{files}"

    def records() -> Iterator[RawRecord]:
        data = dataset()
        if len(data) == 0:
            raise DataError([f"{label}: empty dataset (no rows)"])
        number = 0
        for batch in data.iter(batch_size=1024):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys)):
                number += 1
                yield RawRecord(number, dict(zip(keys, values)))

    return RecordSource(label, "row ", name.split("/")[1].replace("-", "_"), identity, records)


def load_hub_dataset(name: str, config: str | None, split: str, revision: str | None, label: str):
    """`datasets.load_dataset` of a hub dataset; offline, from the local hub snapshot first."""
    import datasets
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in (
        "1",
        "true",
        "yes",
    )
    try:
        if offline:
            try:
                folder = snapshot_download(name, repo_type="dataset", revision=revision, local_files_only=True)
            except LocalEntryNotFoundError:
                folder = None
            if folder is not None:
                return datasets.load_dataset(folder, config, split=split)
        return datasets.load_dataset(name, config, split=split, revision=revision)
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        hint = f" (offline: download it first, e.g. `huggingface-cli download --repo-type dataset {name}`)" if offline else ""
        raise DataError([f"{label}: cannot load the hub dataset: {err}{hint}"]) from None


__all__ = ["HUB_PREFIX", "RecordSource", "is_hub", "load_hub_dataset", "open_source"]
