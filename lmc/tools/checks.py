"""Argument checks the tools share, run first so bad input fails in a second with one clear
message (``ValueError`` / ``OSError``: the jobs print it as one ``error:`` line), not after
minutes of work or as a traceback from deep inside torch.

    check_device("cuda:1")                       # auto | cpu | cuda | cuda:N, and that it exists
    check_output_folder("pred/", "pred/*.png, strip.png, strip.gif")
"""
from __future__ import annotations

import re
from pathlib import Path

DEVICE_CHOICES = "auto (cuda when there is one, else cpu), cpu, cuda or cuda:N (N a GPU index)"


def check_device(device) -> None:
    """``device`` (None, a string or a torch.device) names one this project runs on and this
    machine has: None/"auto", "cpu", "cuda", "cuda:N". Raises ValueError naming the allowed
    values (torch itself accepts many more strings, then fails later with a traceback)."""
    if device is None:
        return
    text = str(device)
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", text):
        raise ValueError(f"device {text!r} is not allowed; allowed: {DEVICE_CHOICES}")
    if text.startswith("cuda"):
        import torch

        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"device {text!r}: this machine has no CUDA device; allowed here: "
                             "auto or cpu")
        index = int(text.partition(":")[2] or 0)
        if index >= count:
            raise ValueError(f"device {text!r}: this machine has {count} CUDA device(s); allowed "
                             f"here: auto, cpu, cuda or cuda:0 to cuda:{count - 1}")


def check_output_folder(output, holds: str) -> None:
    """``output`` is a folder, or can become one: neither it nor the nearest existing path
    above it is a file. ``holds`` says what the folder is for (named in the message)."""
    path = Path(output)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is an existing file" if p == path else f"is under {str(p)!r}, a file"
                raise NotADirectoryError(
                    f"output {str(output)!r} {where}; the output is a folder (for {holds}): "
                    "name a new or an existing folder")
            return
