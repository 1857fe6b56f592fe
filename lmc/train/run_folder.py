"""A training run's folder: the names of what a run leaves there and the storage it lives on.
The driver and the trainer both import this module; it imports no Ray.

A run lives in ``<storage>/<name>/`` (a path or s3://): ``checkpoint_<iteration>`` folders
(model.pt, train_state.pt, config.json and, last, checkpoint.json; see ``lmc.checkpoint`` and
``checkpoints``), ``lease.json`` while a job runs it (``lease``), ``tensorboard/``,
``attempts.json``, ``metrics.json``, ``learning_curves.csv/.png``, ``curves_<protocol>.csv/.png`` and
``prediction.png/.gif``; Ray Train's own files (its snapshot of reported metrics) beside them.
"""
from __future__ import annotations

import json

from .settings import RunSettings

METRICS_FILE = "metrics.json"
# Every attempt of the run (rank 0 writes it when one starts, steps first, gets a preemption
# notice): also the attempts that ended before committing a checkpoint, which the checkpoints'
# own copy of the history (the lineage of the restored state) cannot hold.
ATTEMPTS_FILE = "attempts.json"
STRIP_NAME = "prediction"       # prediction.png / prediction.gif: input | truth | prediction


class StorageError(OSError):
    """The run's storage path cannot be reached or written."""


def storage_location(uri: str):
    """A local path or s3://bucket/prefix as a `pipeline.storage.Location` (S3 configured from
    the environment only; picklable, so workers rebuild it from the URI)."""
    from pipeline.storage import Location
    return Location.of(uri)


def latest_checkpoint(run) -> str | None:
    """The newest verified ``checkpoint_<iteration>`` folder of a run (relative name), or None
    (``checkpoints.RunCheckpoints.newest_verified``, which also says what it skipped)."""
    from .checkpoints import RunCheckpoints
    return RunCheckpoints(run).newest_verified().name


def read_json(loc, name: str) -> dict | None:
    try:
        return json.loads(loc.read_bytes(name)) if loc.exists(name) else None
    except Exception:
        return None


def s3_env(s: RunSettings) -> dict:
    """The driver's S3 settings when the run touches s3://: workers (possibly started before
    the driver set them, or on other nodes) read test windows and write the run folder."""
    from pipeline.storage import s3_environment
    return s3_environment() if "s3://" in s.data + s.storage else {}
