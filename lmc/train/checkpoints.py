"""A run's checkpoints in its storage folder (a path or s3://): commit, verify, choose, prune.

``<run>/checkpoint_<iteration>/`` holds ``lmc.checkpoint``'s files and, written last,
``checkpoint.json`` (each file's name, size and sha256). This module is the only record of a
run's checkpoints: Ray Train carries metrics but no checkpoint, so its own record cannot
disagree with the storage, and what the driver announces (``newest_verified``) is exactly what
the workers restore.

- ``commit`` uploads a finished local checkpoint folder file by file, checks the uploaded
  sizes, runs the caller's ``fence`` (the run lease: only a live job writes), then uploads the
  manifest. A checkpoint cut short (full disk, killed writer) has no manifest, or files that
  do not match it, and never counts.
- ``newest_verified`` walks the checkpoints newest first and returns the first whose every file
  verifies; each one skipped is reported with the file and why.
- ``prune`` deletes only checkpoints older than the newest ``keep`` known-good ones (verified
  at resume or committed by this job): never a verified checkpoint newer than the resumed one.
No Ray.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs as pafs

from ..checkpoint import MANIFEST_FILE, atomic_write, parse_manifest, verify_files
from ..reference import CheckpointError

CHECKPOINT_PREFIX = "checkpoint_"


def checkpoint_name(iteration: int) -> str:
    return f"{CHECKPOINT_PREFIX}{iteration:09d}"


def checkpoint_iteration(name: str) -> int:
    return int(name[len(CHECKPOINT_PREFIX):])


@dataclass
class Choice:
    """What a run resumes from: the newest verified checkpoint (None: a new run) and the
    newer ones skipped, each (name, why)."""
    name: str | None
    skipped: list[tuple[str, str]]

    @property
    def iteration(self) -> int:
        return checkpoint_iteration(self.name) if self.name else 0

    def describe(self) -> str:
        lines = [f"warning: skipping {n}: {why}" for n, why in self.skipped]
        return "\n".join(lines)


class RunCheckpoints:
    """The checkpoints of the run at ``run`` (a ``pipeline.storage.Location``)."""

    def __init__(self, run):
        self.run = run
        self.known_good: set[str] = set()     # verified at resume or committed by this job

    # -- reading ---------------------------------------------------------------------------
    def _sizes(self, prefix: str = "") -> dict[str, int]:
        """{relative path: bytes} of the files under ``prefix`` (one listing)."""
        base = self.run.path(prefix) if prefix else self.run.root
        sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        root = self.run.root.rstrip("/") + "/"
        return {i.path[len(root):]: i.size for i in self.run.fs.get_file_info(sel)
                if i.type == pafs.FileType.File}

    def names(self) -> list[str]:
        """Every ``checkpoint_<iteration>`` folder, complete or not, oldest first."""
        sel = pafs.FileSelector(self.run.root, recursive=False, allow_not_found=True)
        out = []
        for i in self.run.fs.get_file_info(sel):
            name = i.path.rstrip("/").rsplit("/", 1)[-1]
            if (i.type == pafs.FileType.Directory and name.startswith(CHECKPOINT_PREFIX)
                    and name[len(CHECKPOINT_PREFIX):].isdigit()):
                out.append(name)
        return sorted(out, key=checkpoint_iteration)

    def manifest(self, name: str) -> dict:
        where = f"{self.run.uri}/{name}/{MANIFEST_FILE}"
        if not self.run.exists(name, MANIFEST_FILE):
            raise CheckpointError(
                f"{self.run.uri}/{name} has no {MANIFEST_FILE}: it was not finished (the job "
                "or its storage stopped while writing it), or a version before checkpoints "
                "carried one wrote it (to resume from such a folder after checking its files: "
                f"python -c \"from lmc.checkpoint import write_manifest; write_manifest('<the "
                f"folder>')\")")
        return parse_manifest(self.run.read_bytes(name, MANIFEST_FILE), where)

    def verify(self, name: str) -> dict:
        """The manifest of ``name`` after every file it lists verified (size, then sha256
        streamed from storage); ``CheckpointError`` naming the first file that does not."""
        manifest = self.manifest(name)
        sizes = self._sizes(name)
        verify_files(manifest, lambda f: sizes.get(f"{name}/{f}"),
                     lambda f: self.run.fs.open_input_stream(self.run.path(name, f)),
                     f"{self.run.uri}/{name}")
        return manifest

    def newest_verified(self) -> Choice:
        """The newest checkpoint that verifies, and the newer ones that did not. Raises
        ``CheckpointError`` when checkpoints exist and none verifies: starting over would
        silently drop the run, so the user decides (restore them, or another --name)."""
        names, skipped = self.names(), []
        for name in reversed(names):
            try:
                self.verify(name)
            except CheckpointError as e:
                skipped.append((name, str(e)))
                continue
            self.known_good.add(name)
            return Choice(name, skipped)
        if names:
            raise CheckpointError(
                f"run {self.run.uri} has {len(names)} checkpoint folder(s) and none verifies ("
                + "; ".join(why for _, why in skipped[:3]) + "); restore them, or start a new "
                "run with another --name")
        return Choice(None, [])

    @contextmanager
    def local_copy(self, name: str):
        """A local folder holding ``name``'s files (the folder itself for local storage, a
        downloaded copy for S3), for ``lmc.checkpoint.load_model`` to verify and load."""
        if self.run.is_local:
            yield self.run.path(name)
            return
        tmp = tempfile.mkdtemp(prefix="lmc-ckpt-")
        try:
            for rel in self._sizes(name):
                local = os.path.join(tmp, rel.split("/", 1)[1])
                with self.run.fs.open_input_stream(self.run.path(rel)) as src, \
                        open(local, "wb") as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- writing ---------------------------------------------------------------------------
    def commit(self, local_dir: str, name: str, fence=lambda: None) -> None:
        """Copy the checkpoint folder ``local_dir`` (made by ``lmc.checkpoint.save_checkpoint``)
        to ``<run>/<name>``: its files, then (sizes checked, ``fence()`` passed) the manifest."""
        manifest = parse_manifest(open(os.path.join(local_dir, MANIFEST_FILE), "rb").read(),
                                  os.path.join(local_dir, MANIFEST_FILE))
        if name in self.names():
            if name in self.known_good or self.run.exists(name, MANIFEST_FILE) and \
                    self._verifies(name):
                raise CheckpointError(f"{self.run.uri}/{name} is a verified checkpoint; "
                                      "refusing to overwrite it")
            self.run.delete(name)                 # an unfinished one from an earlier attempt
        for f in manifest["files"]:
            self._upload(os.path.join(local_dir, f["name"]), name, f["name"])
        sizes = self._sizes(name)
        short = [f["name"] for f in manifest["files"] if sizes.get(f"{name}/{f['name']}") != f["bytes"]]
        if short:
            raise OSError(f"{self.run.uri}/{name}/{short[0]}: the stored copy has the wrong "
                          "size after upload")
        fence()
        self._upload(os.path.join(local_dir, MANIFEST_FILE), name, MANIFEST_FILE)
        self.known_good.add(name)

    def _verifies(self, name: str) -> bool:
        try:
            self.verify(name)
            return True
        except CheckpointError:
            return False

    def _upload(self, local: str, *parts: str) -> None:
        target = self.run.path(*parts)
        if self.run.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            atomic_write(target, lambda tmp: shutil.copyfile(local, tmp))
        else:
            with open(local, "rb") as src, self.run.fs.open_output_stream(target) as dst:
                shutil.copyfileobj(src, dst, 8 << 20)

    def prune(self, keep: int) -> list[str]:
        """Delete the checkpoints older than the newest ``keep`` known-good ones; returns
        their names. Newer folders, good or not, are never touched here."""
        good = sorted(self.known_good, key=checkpoint_iteration)[-keep:]
        if len(good) < keep:
            return []
        oldest_kept = checkpoint_iteration(good[0])
        gone = [n for n in self.names() if checkpoint_iteration(n) < oldest_kept]
        for n in gone:
            self.run.delete(n)
            self.known_good.discard(n)
        return gone
