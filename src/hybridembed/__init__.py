"""hybridembed: train, evaluate and serve text-embedding models with task-routed hybrid losses."""

__version__ = "0.1.0"
