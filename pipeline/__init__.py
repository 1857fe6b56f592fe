"""Ray Data pipeline: raw videos -> decord -> Parquet shards of short/long clip pairs; loaders.

Knows frames, windows and shards only (never the model). `import pipeline` is cheap: Ray, torch
and the sources load on first use.

    from pipeline import KTHSource, ShardConfig, prepare
    prepare(KTHSource("data/kth"), "data/kth-shards", ShardConfig(img_size=128))
    ds = pipeline.load_split("data/kth-shards", "train")          # ray.data.Dataset
    for window in pipeline.iter_train_batches(ds, batch_size=8, window_len=20, seed=0): ...
    facts = pipeline.DatasetFacts.read("data/kth-shards")          # what the shards hold
    pipeline.verify_dataset(facts, ("train", "test"))              # files = manifest (sha256)
"""
from __future__ import annotations

import importlib

from pipeline.config import ShardConfig

_LAZY = {
    "load_split": "pipeline.loader", "iter_train_batches": "pipeline.loader",
    "iter_test_windows": "pipeline.loader", "shuffle_buffer_rows": "pipeline.loader",
    "read_manifest": "pipeline.shards", "frames_from_row": "pipeline.shards",
    "verify": "pipeline.shards", "OutputExistsError": "pipeline.shards",
    "DatasetFacts": "pipeline.shards", "DataError": "pipeline.shards",
    "verify_dataset": "pipeline.integrity", "VerifyReport": "pipeline.integrity",
    "prepare": "pipeline.preparation",
    "KTHSource": "pipeline.sources", "MovingMNISTSource": "pipeline.sources",
    "H36MSource": "pipeline.sources", "FolderSource": "pipeline.sources",
    "write_kth_like": "pipeline.synthetic",
}

__all__ = ["ShardConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
