"""TensorBoard event files of a run (rank 0): ``<run>/tensorboard``, written locally and
uploaded at every flush when the run lives on s3://.

The writer (and with it the event file, and for s3:// the local temp folder) is made on the
first finite scalar, not before: an attempt that fails or is retried before it logs anything
leaves no empty event file behind."""
from __future__ import annotations

import math
import os
import shutil
import tempfile


class TensorBoard:
    def __init__(self, run):
        self.run = run
        self.local: str | None = None
        self.w = None

    def _writer(self):
        if self.w is None:
            from tensorboardX import SummaryWriter

            self.local = (self.run.path("tensorboard") if self.run.is_local
                          else tempfile.mkdtemp(prefix="lmc-tb-"))
            self.w = SummaryWriter(self.local)
        return self.w

    def scalars(self, step: int, values: dict) -> None:
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._writer().add_scalar(k, v, step)

    def flush(self) -> None:
        if self.w is None:
            return
        self.w.flush()
        if not self.run.is_local:
            for f in os.listdir(self.local):
                with open(os.path.join(self.local, f), "rb") as fh:
                    self.run.write_bytes(fh.read(), "tensorboard", f)

    def close(self) -> None:
        if self.w is None:
            return
        self.flush()
        self.w.close()
        if not self.run.is_local:      # uploaded by the flush above: the temp copy is spent
            shutil.rmtree(self.local, ignore_errors=True)
        self.w = self.local = None
