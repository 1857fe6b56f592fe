"""Training on Ray Train: where Ray lives (with ``lmc.experiments``); the paper's code it drives
(``lmc.model``, ``lmc.alignment``, ...) stays plain PyTorch.

    settings.py     RunSettings: what a run reads and writes, how it is scheduled (no Ray)
    run_folder.py   the run folder's file names, its storage location, StorageError (no Ray)
    checkpoints.py  the run's verified checkpoints: commit, choose the newest, prune (no Ray)
    lease.py        one live job per run folder: the lease, its heartbeat, the workers' fence
    driver.py       check / validate a run, then ``train``: a TorchTrainer over the shards
    placement.py    what each worker reserves; whether the cluster can ever place them
    trainer.py      one worker: step, validate, checkpoint, finish (``train_loop_per_worker``)
    control.py      what every rank agrees on at a step: go on, stop, end on an error
    hooks.py        the hooks injected into the trainer (tests' faults), parameter tracing
    tensorboard.py  the run's event files
    cli.py          the command line of jobs/train_*.py
"""
from pipeline import DataError

from .driver import Plan, RunFailedError, RunStopped, check, check_storage, train, validate
from .lease import RunLockedError
from .run_folder import StorageError, latest_checkpoint, storage_location
from .settings import RunSettings

__all__ = ["train", "validate", "check", "check_storage", "Plan", "RunSettings", "DataError",
           "StorageError", "RunFailedError", "RunStopped", "RunLockedError", "latest_checkpoint",
           "storage_location"]
