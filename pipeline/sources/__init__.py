"""Dataset sources. Each lists its inputs as small dict *items* on the driver (`items()`) and
turns one item into shard rows inside a Ray task (`rows(item, config)`, a plain generator)."""
from pipeline.sources.folder import FolderSource
from pipeline.sources.h36m import H36MSource
from pipeline.sources.kth import KTHSource
from pipeline.sources.mmnist import MovingMNISTSource

__all__ = ["FolderSource", "H36MSource", "KTHSource", "MovingMNISTSource"]
