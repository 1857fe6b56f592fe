"""Decode videos with decord, isolated from the process that asked.

decord (0.6) wraps ffmpeg and can crash the whole process on corrupt data. A Ray worker that
dies takes its task (and, after retries, the dataset job) with it, so decoding runs in a
long-lived child process per worker (`IsolatedDecoder`). If the child dies or hangs, the video is
reported as skipped with the reason and a fresh child is started for the next one.

Frames are resized at decode (`VideoReader(width=, height=)`); grayscale is the BT.601 luma of
the decoded RGB frame (0.299 R + 0.587 G + 0.114 B, rounded), never one colour channel.

Protocol (child <-> parent, over pipes): one JSON request line, one JSON reply line. Frames go
through a file in shared memory (/dev/shm) rather than the pipe: one hand-off per chunk instead
of one per 64 KB pipe buffer, which matters on a busy machine where every wake-up of a niced
Ray worker waits for the scheduler.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass

import numpy as np

_LUMA = np.array([299, 587, 114], dtype=np.uint32)  # BT.601, in thousandths


class DecodeError(Exception):
    """A video that cannot be used; the message is the reason recorded in errors.jsonl."""


def luma(rgb: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 RGB -> (..., H, W, 1) uint8 BT.601 luma, rounded half up, exact.

    Integer arithmetic in place, over slices of ~128k pixels so the uint32 temporaries stay in
    cache: about 3x faster than one pass (or a float matmul) over a whole video.
    """
    flat = rgb.reshape(-1, *rgb.shape[-3:])  # (N, H, W, 3)
    out = np.empty(flat.shape[:-1] + (1,), np.uint8)
    step = max(1, (1 << 17) // (flat.shape[1] * flat.shape[2]))
    for i in range(0, len(flat), step):
        part = flat[i:i + step]
        y = part[..., 0].astype(np.uint32) * _LUMA[0]
        y += part[..., 1] * _LUMA[1]
        y += part[..., 2] * _LUMA[2]
        y += 500
        y //= 1000
        out[i:i + step, ..., 0] = y
    return out.reshape(rgb.shape[:-1] + (1,))


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    width: int    # native size, before resizing
    height: int
    fps: float


def container_problem(path: str) -> str | None:
    """Why a RIFF (AVI) or ISO-BMFF (MP4/MOV) file is visibly truncated, else None.

    Walks the top-level chunks/boxes (headers only) and checks that each fits in the file.
    Decoders quietly return the frames before the cut (an AVI cut in half "has" half its
    frames), so this is the only way such a file gets noticed.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF":
            pos = 0
            while pos + 8 <= size:
                f.seek(pos)
                fourcc, length = f.read(4), int.from_bytes(f.read(4), "little")
                end = pos + 8 + length + (length & 1)
                if pos + 8 + length > size:
                    return (f"truncated: {fourcc.decode(errors='replace')} chunk at byte {pos} "
                            f"declares {length} bytes, the file ends {pos + 8 + length - size} "
                            "bytes early")
                pos = end
        elif head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
            pos = 0
            while pos + 8 <= size:
                f.seek(pos)
                length, kind = int.from_bytes(f.read(4), "big"), f.read(4)
                if length == 1:
                    length = int.from_bytes(f.read(8), "big")
                elif length == 0:
                    break  # box extends to the end of the file
                if length < 8 or pos + length > size:
                    return (f"truncated: box {kind.decode(errors='replace')} at byte {pos} "
                            f"declares {length} bytes, the file has {size - pos} left")
                pos += length
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class _Reader:
    """In-process decord reader for one file (what the child process runs)."""

    def __init__(self, path: str, size: int, channels: int, threads: int = 1):
        import decord  # imported lazily: only decoding processes need it

        try:
            probe = decord.VideoReader(path, num_threads=1)
            n = len(probe)
            if n == 0:
                raise DecodeError("video has no frames")
            h, w = probe[0].shape[:2]
            fps = float(probe.get_avg_fps())
            del probe
            self.vr = decord.VideoReader(path, width=size, height=size, num_threads=threads)
        except DecodeError:
            raise
        except Exception as exc:  # decord raises its own error types for unreadable input
            raise DecodeError(f"cannot open video: {_first_line(exc)}") from None
        self.info = VideoInfo(num_frames=n, width=int(w), height=int(h), fps=fps)
        self.channels = channels

    def read(self, start: int, stop: int, step: int = 1) -> np.ndarray:
        """Frames [start, stop) every `step` -> (T, size, size, channels) uint8."""
        try:
            rgb = self.vr.get_batch(list(range(start, stop, step))).asnumpy()  # (T, H, W, 3)
        except Exception as exc:
            raise DecodeError(f"decode failed in frames {start}-{stop - 1}: "
                              f"{_first_line(exc)}") from None
        return luma(rgb) if self.channels == 1 else rgb


def _serve() -> None:
    """Child main loop: answer open/read request lines from stdin until it ends."""
    out = sys.stdout.buffer
    reader: _Reader | None = None
    for line in sys.stdin.buffer:
        req = json.loads(line)
        try:
            if req["op"] == "open":
                reader = None
                reader = _Reader(req["path"], req["size"], req["channels"], req["threads"])
                reply = {"ok": True, **reader.info.__dict__}
            else:
                frames = np.ascontiguousarray(reader.read(req["start"], req["stop"], req["step"]))
                frames.tofile(req["out"])
                reply = {"ok": True, "shape": list(frames.shape), "file": req["out"]}
        except DecodeError as exc:
            reply = {"ok": False, "reason": str(exc)}
        except Exception as exc:  # never let the child die on a Python-level error
            reply = {"ok": False, "reason": f"decoder error: {_first_line(exc)}"}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


class IsolatedDecoder:
    """Decode in a child process; a crash or hang becomes a `DecodeError`, never ours."""

    command = [sys.executable, "-c", "from pipeline.decode import _serve; _serve()"]

    def __init__(self, timeout_s: float = 600.0):
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self._scratch = tempfile.mkdtemp(prefix="lmc-decode-", dir=shm)
        weakref.finalize(self, shutil.rmtree, self._scratch, True)
        self._reads = 0

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        return self._proc

    def _call(self, request: dict) -> dict:
        proc = self._proc if self._proc and self._proc.poll() is None else self._start()
        fired = threading.Event()
        timer = threading.Timer(self.timeout_s, lambda: (fired.set(), proc.kill()))
        timer.start()
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline()
            reply = json.loads(header) if header else None
        except (BrokenPipeError, OSError, ValueError):
            reply = None
        finally:
            timer.cancel()
        if reply is None:
            raise DecodeError(self._death_reason(proc, fired.is_set()))
        if not reply["ok"]:
            raise DecodeError(reply["reason"])
        return reply

    def _death_reason(self, proc: subprocess.Popen, timed_out: bool) -> str:
        code = proc.wait()
        self._proc = None
        if timed_out:
            return f"decoder timed out after {self.timeout_s:.0f} s"
        what = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        return f"decoder crashed ({what})" + (f": {tail[0][:200]}" if tail else "")

    def open(self, path: str, *, size: int, channels: int, threads: int = 1) -> VideoInfo:
        reply = self._call({"op": "open", "path": path, "size": size, "channels": channels,
                               "threads": threads})
        return VideoInfo(reply["num_frames"], reply["width"], reply["height"], reply["fps"])

    def read(self, start: int, stop: int, step: int = 1) -> np.ndarray:
        """Frames [start, stop) every `step` of the open video -> (T, S, S, C) uint8."""
        self._reads += 1
        os.makedirs(self._scratch, exist_ok=True)  # (again, if close() removed it)
        out = os.path.join(self._scratch, f"{self._reads}.raw")
        try:
            reply = self._call({"op": "read", "start": start, "stop": stop, "step": step,
                                "out": out})
            frames = np.fromfile(out, np.uint8)
        finally:
            if os.path.exists(out):
                os.remove(out)
        if frames.size != int(np.prod(reply["shape"])):
            raise DecodeError(f"decoder returned {frames.size} bytes for shape {reply['shape']}")
        return frames.reshape(reply["shape"])

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait()
            self._proc = None
        shutil.rmtree(self._scratch, ignore_errors=True)


_worker_decoder: IsolatedDecoder | None = None


def worker_decoder(timeout_s: float) -> IsolatedDecoder:
    """This process's decoder child (one per Ray worker, reused across tasks)."""
    global _worker_decoder
    if _worker_decoder is None:
        _worker_decoder = IsolatedDecoder(timeout_s)
    _worker_decoder.timeout_s = timeout_s
    return _worker_decoder
