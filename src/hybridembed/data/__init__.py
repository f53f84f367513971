"""Data loading: readers for files, format adapters to canonical task rows, validation with file:line errors."""

from hybridembed.data.loading import TaskDataset, load_dataset, load_datasets

__all__ = ["TaskDataset", "load_dataset", "load_datasets"]
