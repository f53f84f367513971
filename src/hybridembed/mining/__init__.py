"""Hard negatives: offline mining with faiss (`offline`), the memmap embedding cache (`cache`), dynamic re-mining during training (`dynamic`).

Submodules are imported on use: importing this package (the recipe schema does) loads neither
torch nor faiss.
"""

from hybridembed.mining.config import DynamicMiningConfig, MiningConfig

__all__ = ["DynamicMiningConfig", "MiningConfig"]
