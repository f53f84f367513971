"""hybridembed: train, evaluate and serve text-embedding models with task-routed hybrid losses."""

from hybridembed.api import evaluate, mine, train

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "mine", "train"]
