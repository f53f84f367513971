"""hybridembed: train, evaluate and serve text-embedding models with task-routed hybrid losses."""

from importlib.metadata import PackageNotFoundError, version

from hybridembed.api import evaluate, mine, train

try:
    __version__ = version("hybridembed")  # the one source is pyproject.toml's [project] version
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["__version__", "evaluate", "mine", "train"]
