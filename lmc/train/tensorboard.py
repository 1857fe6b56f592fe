"""TensorBoard event files of a run (rank 0): ``<run>/tensorboard``, written locally and
uploaded at every flush when the run lives on s3://."""
from __future__ import annotations

import math
import os
import tempfile


class TensorBoard:
    def __init__(self, run):
        from tensorboardX import SummaryWriter
        self.run = run
        self.local = run.path("tensorboard") if run.is_local else tempfile.mkdtemp(prefix="lmc-tb-")
        self.w = SummaryWriter(self.local)

    def scalars(self, step: int, values: dict) -> None:
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.w.add_scalar(k, v, step)

    def flush(self) -> None:
        self.w.flush()
        if not self.run.is_local:
            for f in os.listdir(self.local):
                with open(os.path.join(self.local, f), "rb") as fh:
                    self.run.write_bytes(fh.read(), "tensorboard", f)

    def close(self) -> None:
        self.flush()
        self.w.close()
