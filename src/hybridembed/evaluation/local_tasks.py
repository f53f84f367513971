"""Turn a suite's local task into an mteb task (its `load_data` reads our files), or fetch a named mteb task.

What this adds over mteb: mteb's task classes load from the Hugging Face hub; here each local
task is a subclass of the matching mteb abstract task (`AbsTaskSTS`, `AbsTaskPairClassification`,
`AbsTaskClassification`, `AbsTaskClustering`, `AbsTaskRetrieval`) whose `load_data` builds the
same dataset layout from the files named in the suite, so the metrics are mteb's own code.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from mteb.abstasks.task_metadata import TaskMetadata

from hybridembed.errors import DataError, HybridembedError
from hybridembed.evaluation.local_data import (
    read_beir,
    read_columns,
    read_ranking_rows,
    restrict_retrieval,
    subsample,
    to_float,
)
from hybridembed.evaluation.suite import DEFAULT_MAIN_SCORE, TaskSpec
from hybridembed.tasks import TaskType

logger = logging.getLogger(__name__)

MTEB_TYPE = {
    TaskType.STS: "STS",
    TaskType.PAIR_CLASSIFICATION: "PairClassification",
    TaskType.CLASSIFICATION: "Classification",
    TaskType.CLUSTERING: "Clustering",
    TaskType.RERANKING: "Reranking",
    TaskType.RETRIEVAL: "Retrieval",
}
# mteb task type -> ours, for named tasks.
FROM_MTEB_TYPE = {v: k for k, v in MTEB_TYPE.items()}


def _fingerprint(spec: TaskSpec) -> str:
    """A revision string for the metadata: changes when the suite entry or the file size/mtime changes."""
    h = hashlib.sha1(spec.model_dump_json().encode())
    for p in (spec.path, spec.train_path):
        if p is not None and p.is_file():
            st = p.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def task_metadata(spec: TaskSpec) -> TaskMetadata:
    assert spec.type is not None and spec.split is not None
    return TaskMetadata(
        name=spec.name,
        description=f"Local {spec.type} task read from {spec.path}",
        dataset={"path": str(spec.path), "revision": _fingerprint(spec)},
        type=MTEB_TYPE[spec.type],
        category="t2t",
        modalities=["text"],
        eval_splits=[spec.split],
        eval_langs=[spec.language],
        main_score=spec.main_score or DEFAULT_MAIN_SCORE[spec.type],
    )


def _eval_split(spec: TaskSpec) -> str:
    """The split a local task is evaluated on (the suite defaults it to `test`; task_metadata checked it is set)."""
    assert spec.split is not None
    return spec.split


class _LocalTaskMixin:
    """Shared by the local task classes: metadata from the spec; `load_data` builds `self.dataset`."""

    spec: TaskSpec

    def __init__(self, spec: TaskSpec, **kwargs: Any) -> None:
        self.spec = spec
        self.metadata = task_metadata(spec)
        super().__init__(seed=spec.seed, **kwargs)  # type: ignore[call-arg]

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:  # type: ignore[has-type]
            return
        from datasets import DatasetDict

        self.dataset = DatasetDict(self._build_splits())
        self.data_loaded = True

    def _build_splits(self) -> dict[str, Any]:
        raise NotImplementedError


def _scored_pairs(spec: TaskSpec) -> tuple[list[str], list[str], list[float]]:
    rows = subsample(read_columns(spec), spec.max_samples, spec.seed)
    key = "score" if spec.type == TaskType.STS else "label"
    text1, text2, values = [], [], []
    dropped = 0
    for row in rows:
        raw = row[key]
        if spec.label_map is not None:
            if str(raw) not in spec.label_map:
                dropped += 1
                continue
            value = float(spec.label_map[str(raw)])
        else:
            value = to_float(raw, f"{spec.path}:{row['_line']}: {key}")
        text1.append(str(row["text1"]))
        text2.append(str(row["text2"]))
        values.append(value)
    if dropped:
        logger.info("task %s: dropped %d rows whose label is not in label_map", spec.name, dropped)
    if not values:
        raise DataError([f"{spec.path}: no rows left after label_map"], summary=f"task {spec.name!r}")
    return text1, text2, values


def build_sts(spec: TaskSpec) -> Any:
    from datasets import Dataset
    from mteb.abstasks.sts import AbsTaskSTS

    class LocalSTSTask(_LocalTaskMixin, AbsTaskSTS):
        def _build_splits(self) -> dict[str, Any]:
            text1, text2, scores = _scored_pairs(self.spec)
            low, high = self.spec.score_range or (min(scores), max(scores))
            if high <= low:
                raise DataError([f"{self.spec.path}: all gold scores are equal ({low}); STS needs a spread"])
            # mteb normalises gold scores with these; it annotates them int, but any number works.
            self.min_score, self.max_score = low, high  # type: ignore[assignment]
            return {_eval_split(self.spec): Dataset.from_dict({"sentence1": text1, "sentence2": text2, "score": scores})}

    return LocalSTSTask(spec)


def build_pair_classification(spec: TaskSpec) -> Any:
    from datasets import Dataset
    from mteb.abstasks.pair_classification import AbsTaskPairClassification

    class LocalPairClassificationTask(_LocalTaskMixin, AbsTaskPairClassification):
        def _build_splits(self) -> dict[str, Any]:
            text1, text2, values = _scored_pairs(self.spec)
            labels = [int(v) for v in values]
            if set(labels) - {0, 1} or len(set(labels)) < 2:
                raise DataError(
                    [f"{self.spec.path}: pair labels must be 0/1 with both present (found {sorted(set(labels))[:10]}); use label_map"],
                    summary=f"task {self.spec.name!r}",
                )
            data = {"sentence1": text1, "sentence2": text2, "labels": labels}
            return {_eval_split(self.spec): Dataset.from_dict(data)}

    return LocalPairClassificationTask(spec)


def _texts_labels(spec: TaskSpec, path: Any = None, limit: int | None = None) -> tuple[list[str], list[str]]:
    rows = subsample(read_columns(spec, path), limit, spec.seed)
    return [str(r["text"]) for r in rows], [str(r["label"]) for r in rows]


def build_classification(spec: TaskSpec) -> Any:
    from datasets import Dataset
    from mteb.abstasks.classification import AbsTaskClassification

    class LocalClassificationTask(_LocalTaskMixin, AbsTaskClassification):
        def _build_splits(self) -> dict[str, Any]:
            if self.spec.split == self.train_split:
                raise DataError([f"task {self.spec.name!r}: split must not be named {self.train_split!r}"])
            train_text, train_label = _texts_labels(self.spec, self.spec.train_path)
            text, label = _texts_labels(self.spec, limit=self.spec.max_samples)
            unseen = sorted(set(label) - set(train_label))
            if unseen:
                logger.warning("task %s: %d test labels never occur in train_path: %s", self.spec.name, len(unseen), unseen[:5])
            return {
                self.train_split: Dataset.from_dict({"text": train_text, "label": train_label}),
                _eval_split(self.spec): Dataset.from_dict({"text": text, "label": label}),
            }

    return LocalClassificationTask(spec)


def build_clustering(spec: TaskSpec) -> Any:
    from datasets import Dataset
    from mteb.abstasks.clustering import AbsTaskClustering

    class LocalClusteringTask(_LocalTaskMixin, AbsTaskClustering):
        # mteb's default embeds 4% of a (huge) hub set; a local set is used whole (`max_samples` trims it).
        max_fraction_of_documents_to_embed = None

        def _build_splits(self) -> dict[str, Any]:
            text, label = _texts_labels(self.spec, limit=self.spec.max_samples)
            return {_eval_split(self.spec): Dataset.from_dict({"sentences": text, "labels": label})}

    return LocalClusteringTask(spec)


def build_retrieval(spec: TaskSpec) -> Any:
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    class LocalRetrievalTask(_LocalTaskMixin, AbsTaskRetrieval):
        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            if self.data_loaded:
                return
            spec = self.spec
            raw = read_beir(spec) if spec.resolved_format == "beir" else read_ranking_rows(spec)
            data, dropped = restrict_retrieval(raw, spec)
            if dropped:
                logger.info("task %s: %d queries without a relevant document left out (as mteb does)", spec.name, dropped)
            if not data.queries:
                raise DataError([f"{spec.path}: no query has a relevant document"], summary=f"task {spec.name!r}")
            reranking = spec.type == TaskType.RERANKING
            if reranking and not data.candidates:
                # a BEIR folder as reranking: each query's candidates are its judged documents
                data.candidates = {q: list(data.qrels[q]) for q in data.queries}
            split = {
                "corpus": Dataset.from_dict({"id": list(data.corpus), "text": list(data.corpus.values())}),
                "queries": Dataset.from_dict({"id": list(data.queries), "text": list(data.queries.values())}),
                "relevant_docs": data.qrels,
                "top_ranked": data.candidates if reranking else None,
            }
            self.dataset = {"default": {spec.split: split}}
            self.data_loaded = True

    return LocalRetrievalTask(spec)


BUILDERS = {
    TaskType.STS: build_sts,
    TaskType.PAIR_CLASSIFICATION: build_pair_classification,
    TaskType.CLASSIFICATION: build_classification,
    TaskType.CLUSTERING: build_clustering,
    TaskType.RETRIEVAL: build_retrieval,
    TaskType.RERANKING: build_retrieval,
}


def build_local_task(spec: TaskSpec) -> Any:
    """An mteb task instance for a local suite entry (data is read when mteb calls load_data)."""
    assert spec.type is not None
    builder = BUILDERS.get(spec.type)
    if builder is None:
        raise HybridembedError(f"task {spec.name!r}: type {spec.type} is not supported yet")
    return builder(spec)


def build_named_task(spec: TaskSpec) -> Any:
    """The registered mteb task `spec.mteb_name`; its data loads from the hub or the local HF cache."""
    import mteb

    try:
        task = mteb.get_task(spec.mteb_name, hf_subsets=spec.hf_subsets) if spec.hf_subsets else mteb.get_task(spec.mteb_name)
    except (KeyError, ValueError) as err:
        raise HybridembedError(f"task {spec.name!r}: mteb {mteb.__version__} has no task named {spec.mteb_name!r} ({err})") from None
    return task


def load_named_task_data(task: Any, spec: TaskSpec) -> None:
    """Load a named task's data, turning an unreachable hub into one clear line."""
    try:
        task.load_data()
    except Exception as err:  # datasets / huggingface_hub raise many types when offline
        text = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        raise HybridembedError(
            f"task {spec.name!r}: cannot load the data of mteb task {spec.mteb_name!r} (no hub access and not in the local Hugging Face cache?): {text}"
        ) from None


def task_type_of(task: Any, spec: TaskSpec) -> TaskType | str:
    """Our TaskType for a task (named mteb tasks of other types keep mteb's type name)."""
    if spec.type is not None:
        return spec.type
    return FROM_MTEB_TYPE.get(task.metadata.type, task.metadata.type)
