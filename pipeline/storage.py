"""Local paths and `s3://bucket/prefix` behind one small interface (pyarrow.fs).

S3-compatible stores are reached through an endpoint override taken from the environment
(`LMC_S3_ENDPOINT`, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`). Credentials come only
from the environment or the instance role (the AWS SDK's default chain); they are never logged.
When the keys are in the environment they are passed to the filesystem explicitly, so the
pickled filesystem that Ray ships to workers (through the object store, not logs) still works
on workers whose environment lacks them.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

_ENDPOINT_VARS = ("LMC_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
S3_ENV_VARS = (*_ENDPOINT_VARS, "AWS_REGION", "AWS_DEFAULT_REGION", *_CREDENTIAL_VARS)


def s3_environment() -> dict[str, str]:
    """The S3 settings of this process's environment (endpoint, region, keys), for handing to
    Ray workers that build their own filesystems. Pass it as a task or actor argument (the
    object store), never in a runtime_env: Ray logs runtime_envs in clear text."""
    return {k: os.environ[k] for k in S3_ENV_VARS if os.environ.get(k)}


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem configured from the environment only."""
    kwargs: dict = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                    or "us-east-1"}
    endpoint = next((os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)), None)
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def s3_client_kwargs() -> dict:
    """boto3 client arguments from the same environment as ``s3_filesystem`` (for the few
    calls pyarrow lacks, e.g. conditional writes)."""
    kwargs: dict = {"region_name": os.environ.get("AWS_REGION")
                    or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = next((os.environ[v] for v in _ENDPOINT_VARS if os.environ.get(v)), None)
    if endpoint:
        kwargs["endpoint_url"] = endpoint if "://" in endpoint else f"https://{endpoint}"
    return kwargs


def new_temp_file(folder: str, prefix: str = ".tmp-", suffix: str = "") -> tuple[int, str]:
    """(fd open for writing, path) of a new, uniquely named file in ``folder``, made as a plain
    ``open(path, "w")`` makes one: mode 0o666 less the umask (0644 under the usual 022).
    ``tempfile.mkstemp`` makes 0600 files, which a rename then leaves unreadable to the group
    and others (a manifest, errors.jsonl, metrics.json, a shard). The kernel applies the umask,
    so nothing here reads or changes it (``os.umask`` is process-wide, racy with threads)."""
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                           0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary file name (prefix {prefix!r})")


@dataclass
class Location:
    """A directory-like place: a filesystem plus a root path on it. Picklable (Ray ships it)."""

    uri: str
    fs: pafs.FileSystem
    root: str

    @classmethod
    def of(cls, uri: str) -> "Location":
        uri = str(uri)
        if uri.startswith("s3://"):
            root = uri[len("s3://"):].rstrip("/")
            if not root:
                raise ValueError(f"{uri!r}: an s3:// location needs a bucket")
            return cls(uri.rstrip("/"), s3_filesystem(), root)
        if "://" in uri and not uri.startswith("file://"):
            raise ValueError(f"{uri!r}: only local paths and s3:// are supported")
        path = os.path.abspath(uri.removeprefix("file://"))
        return cls(path, pafs.LocalFileSystem(), path)

    def child(self, name: str) -> "Location":
        """The location `name` below this one (same filesystem)."""
        return Location(f"{self.uri}/{name}", self.fs, self.path(name))

    def makedirs(self) -> None:
        self.fs.create_dir(self.root, recursive=True)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """The filesystem path of `parts` under the root."""
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def uri_of(self, *parts: str) -> str:
        """A user-facing URI (what errors.jsonl records)."""
        rel = "/".join(p.strip("/") for p in parts if p)
        return f"{self.uri}/{rel}" if rel else self.uri

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def size(self, *parts: str) -> int | None:
        info = self.fs.get_file_info(self.path(*parts))
        return info.size if info.type == pafs.FileType.File else None

    def list_files(self, recursive: bool = True) -> list[str]:
        """Paths of all files under the root, relative to it, sorted.

        Locally, dangling links are listed too (as files that will fail to read), so that an
        unreadable input is reported rather than silently missing.
        """
        if self.is_local:
            out = []
            for dirpath, _, files in os.walk(self.root):
                rel = os.path.relpath(dirpath, self.root)
                out += [f if rel == "." else f"{rel}/{f}" for f in files]
                if not recursive:
                    break
            return sorted(out)
        sel = pafs.FileSelector(self.root, recursive=recursive, allow_not_found=True)
        prefix = self.root.rstrip("/") + "/"
        return sorted(i.path[len(prefix):] for i in self.fs.get_file_info(sel)
                      if i.type == pafs.FileType.File)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a file; local writes go through a temp file and an atomic rename, and get the
        mode a plain ``open(..., "w")`` gives (``new_temp_file``)."""
        target = self.path(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd, tmp = new_temp_file(os.path.dirname(target))
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            with self.fs.open_output_stream(target) as f:
                f.write(data)

    def put_file(self, local_path: str, *parts: str) -> None:
        """Move (local) or upload (S3) a finished local file to `parts`."""
        target = self.path(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(local_path, target)
        else:
            with open(local_path, "rb") as src, self.fs.open_output_stream(target) as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
            os.remove(local_path)

    def fetch(self, *parts: str) -> tuple[str, bool]:
        """A local path to read `parts` from: the file itself, or a temp copy (then True)."""
        if self.is_local:
            return self.path(*parts), False
        fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(self.path(*parts))[1])
        with os.fdopen(fd, "wb") as dst, self.fs.open_input_stream(self.path(*parts)) as src:
            shutil.copyfileobj(src, dst, 8 << 20)
        return tmp, True

    def delete(self, *parts: str) -> None:
        path = self.path(*parts)
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(path)
