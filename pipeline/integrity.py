"""Checked data: the shard files a job reads are the ones the manifest lists (docs/design.md §5).

    report = pipeline.verify_dataset("data/kth-shards", ("train", "test"))
    print(report)   # verified 12 shard files (3.1 MB hashed in 0.02 s; 0 from the record)

Two steps, before any frame is read:
  1. every listed file of the asked splits exists with the manifest's byte size (one stat per
     file locally; on S3 one listing per split and one HEAD per file, for its ETag): catches
     missing, truncated and swapped files;
  2. every file not already in the verification record is hashed (sha256, against the
     manifest's), and its Parquet footer is checked against the manifest's config: the rows'
     (num_frames, height, width, channels), split and row count (the footer's column statistics,
     so no frame is decoded). A manifest whose config was edited, or shards of another
     preparation under it, fail here instead of deep inside a training step.

The record (``verified.json``) remembers, per file, what it was when it verified: its size and
mtime (locally also its ctime, which no tool can set back, so a rewritten or replaced file is
hashed again; on S3 the object's ETag, one HEAD request each), its sha256 and its rows' shape.
A file whose stat still matches is not hashed again; its recorded sha256 and shape are checked
against the manifest as it is now. The record lives beside the manifest when the data folder
can be written, else in ``$LMC_CACHE/verified/<sha256 of the dataset's uri>.json`` (LMC_CACHE
defaults to ``~/.cache/lmc-memory``). The manifest itself is not hashed (it is written last and
holds the checksums); its config is checked against the rows instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.shards import (FRAMES_LAYOUT, MANIFEST, RECORD, SPLITS, DataError, DatasetFacts)
from pipeline.storage import Location, new_temp_file

RECORD_FORMAT = "lmc-verified"
RECORD_VERSION = 1
_SHAPE = tuple(FRAMES_LAYOUT["shape"])          # num_frames, height, width, channels
_CHUNK = 8 << 20
_FILE = "Restore the file(s), or prepare the data again."
_ROWS = ("The manifest and the shards disagree (an edited manifest, or shards of another "
         "preparation): prepare the data again.")


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_dataset`` did: files checked, how many were hashed now (and their bytes),
    how many were trusted from the record, the seconds it took and where the record is."""

    data: str
    splits: tuple
    files: int
    hashed: int
    bytes_hashed: int
    from_record: int
    seconds: float
    record: str | None          # the record's path or uri (None: nothing could be recorded)

    def __str__(self) -> str:
        return (f"verified {self.files} shard file(s) of {'+'.join(self.splits)} "
                f"({self.bytes_hashed / 1e6:.1f} MB hashed in {self.seconds:.2f} s; "
                f"{self.from_record} from the record)")


def cache_dir() -> str:
    """Where records of data folders that cannot be written go (``$LMC_CACHE/verified``)."""
    base = os.environ.get("LMC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                       "lmc-memory")
    return os.path.join(base, "verified")


def cache_record_path(uri: str) -> str:
    return os.path.join(cache_dir(), hashlib.sha256(uri.encode()).hexdigest() + ".json")


def verify_dataset(data, splits: Iterable[str] = SPLITS, *,
                   log: Callable[[str], None] | None = print) -> VerifyReport:
    """Check the shard files of ``splits`` against the manifest of ``data`` (a path, an s3://
    uri, a ``Location`` or a ``DatasetFacts`` already read) before a job reads them.

    Raises ``DataError`` naming each bad file's uri with the expected and the found value and
    the fix: a file missing or of another size than the manifest says, a checksum that differs,
    rows whose shape, split or count disagree with the manifest; also an unknown split or a
    folder that is no dataset. Files whose stat matches the verification record are not hashed
    again. Returns a ``VerifyReport`` (also logged as one line through ``log`` unless None)."""
    t0 = time.perf_counter()
    facts = data if isinstance(data, DatasetFacts) else DatasetFacts.read(data)
    splits = tuple(dict.fromkeys([splits] if isinstance(splits, str) else splits))
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DataError(f"split(s) {unknown}: allowed {', '.join(SPLITS)}")
    loc = Location.of(facts.path)
    entries = [s for s in facts.shards if s["split"] in splits]

    # 1. existence and size: one stat (local) or one listing per split (S3)
    stats = _stat_files(loc, [s["path"] for s in entries], splits)
    problems = []
    for s in entries:
        st = stats.get(s["path"])
        if st is None:
            problems.append((loc.uri_of(s["path"]),
                             f"missing (the manifest lists {s['bytes']} bytes)", _FILE))
        elif st["size"] != s["bytes"]:
            problems.append((loc.uri_of(s["path"]), f"{st['size']} bytes, the manifest says "
                             f"{s['bytes']} (truncated, or another file in its place)", _FILE))
    if problems:
        raise DataError(_problems(facts.path, problems))

    # 2. checksums and the rows' shape: from the record when the file is unchanged, else read
    records, record_at = _load_records(loc)
    found, bad, hashed, nbytes = {}, set(), 0, 0
    for s in entries:
        rel, st = s["path"], stats[s["path"]]
        entry = next((r[rel] for r in records if _same_stat(r.get(rel, {}).get("stat"), st)),
                     None)
        if entry is None:
            entry = {"stat": st, **_read_file(loc, rel)}
            hashed += 1
            nbytes += st["size"]
        found[rel] = entry
        mismatch = _compare(loc, facts, s, entry)
        if mismatch:
            problems += mismatch
            bad.add(rel)

    # record what verified (entries of other splits kept; files no longer listed dropped)
    listed = {s["path"] for s in facts.shards}
    files = {rel: e for r in reversed(records) for rel, e in r.items() if rel in listed}
    files.update({rel: e for rel, e in found.items() if rel not in bad})
    if hashed:
        record_at = _save_record(loc, {"format": RECORD_FORMAT, "version": RECORD_VERSION,
                                       "data": loc.uri, "files": files}, record_at)
    if problems:
        raise DataError(_problems(facts.path, problems))
    report = VerifyReport(data=loc.uri, splits=splits, files=len(entries), hashed=hashed,
                          bytes_hashed=nbytes, from_record=len(entries) - hashed,
                          seconds=time.perf_counter() - t0, record=record_at)
    if log:
        log(str(report))
    return report


# ---------------------------------------------------------------------------------------------
# stat, hash, footer

def _stat_files(loc: Location, rels: list[str], splits: tuple) -> dict[str, dict]:
    """rel -> {"size", "mtime_ns"(, "ctime_ns")} of the files that exist."""
    out = {}
    if loc.is_local:
        for rel in rels:
            try:
                st = os.stat(loc.path(rel))
            except FileNotFoundError:
                continue
            out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}
        return out
    want = set(rels)
    prefix = loc.root.rstrip("/") + "/"
    for split in splits:
        sel = pafs.FileSelector(loc.path(split), recursive=True, allow_not_found=True)
        for info in loc.fs.get_file_info(sel):
            rel = info.path[len(prefix):]
            if rel in want and info.type == pafs.FileType.File:
                out[rel] = {"size": info.size, "mtime_ns": info.mtime_ns, "etag": _etag(loc, rel)}
    return out


def _etag(loc: Location, rel: str) -> str | None:
    """The object's ETag (one HEAD request): S3's last-modified time has a resolution of a
    second, the ETag changes with every write of other content."""
    try:
        with loc.fs.open_input_file(loc.path(rel)) as f:
            tag = f.metadata().get("ETag")
    except OSError:
        return None
    return tag.decode() if isinstance(tag, bytes) else tag


def _same_stat(recorded: dict | None, now: dict) -> bool:
    """A recorded stat matches only when every field is there and equal (an S3 object without a
    last-modified time or an ETag is always hashed)."""
    return (bool(recorded) and now.get("mtime_ns") is not None
            and ("etag" not in now or now["etag"] is not None) and recorded == now)


def _read_file(loc: Location, rel: str) -> dict:
    """The file's sha256 and its rows' facts from the Parquet footer ({"sha256", "rows",
    "shape": {column: [min, max]}, "split": [min, max]})."""
    h = hashlib.sha256()
    with loc.fs.open_input_stream(loc.path(rel)) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    entry = {"sha256": h.hexdigest()}
    try:
        with loc.fs.open_input_file(loc.path(rel)) as f:
            meta = pq.ParquetFile(f).metadata
            entry["rows"] = meta.num_rows
            entry.update(_column_ranges(meta))
    except Exception as e:  # not Parquet (the checksum reports it when the manifest's differs)
        entry["footer_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return entry


def _column_ranges(meta) -> dict:
    """[min, max] of the shape columns and of ``split`` over all row groups (None when a row
    group has no statistics)."""
    wanted = (*_SHAPE, "split")
    ranges: dict = {}
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for j in range(rg.num_columns):
            col = rg.column(j)
            name = col.path_in_schema
            if name not in wanted or not rg.num_rows:
                continue
            st = col.statistics
            if st is None or not st.has_min_max:
                ranges[name] = None
                continue
            lo, hi = st.min, st.max
            lo, hi = (lo.decode() if isinstance(lo, bytes) else lo,
                      hi.decode() if isinstance(hi, bytes) else hi)
            if name in ranges and ranges[name] is None:
                continue
            old = ranges.get(name)
            ranges[name] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]
    return {"shape": {k: ranges.get(k) for k in _SHAPE}, "split": ranges.get("split")}


def _compare(loc: Location, facts: DatasetFacts, s: dict, entry: dict) -> list[tuple]:
    """Problems of one file (uri, what, kind): its checksum, then its rows against the
    manifest's entry (count, split) and config (num_frames, height, width, channels)."""
    uri = loc.uri_of(s["path"])
    if entry["sha256"] != s["sha256"]:
        return [(uri, f"sha256 {entry['sha256'][:16]}..., the manifest says {s['sha256'][:16]}... "
                      "(its contents changed: corrupt, or another file of the same size)", _FILE)]
    if "footer_error" in entry:
        return [(uri, f"matches its checksum but is not readable Parquet "
                      f"({entry['footer_error']})", _FILE)]
    problems = []
    if "rows" in s and entry.get("rows") != s["rows"]:
        problems.append((uri, f"{entry.get('rows')} rows, the manifest says {s['rows']}", _ROWS))
    expect = facts.row_shape(s["split"])
    held, said = [], []
    for k in _SHAPE:
        have = (entry.get("shape") or {}).get(k)
        if have is not None and (have[0] != expect[k] or have[1] != expect[k]):
            held.append(f"{k}={have[0] if have[0] == have[1] else f'{have[0]}..{have[1]}'}")
            said.append(f"{k}={expect[k]}")
    if held:
        problems.append((uri, f"its rows hold {', '.join(held)}, the manifest's config says "
                              f"{', '.join(said)}", _ROWS))
    split = entry.get("split")
    if split is not None and split != [s["split"], s["split"]]:
        problems.append((uri, f"its rows are {'/'.join(sorted(set(split)))} windows, the "
                              f"manifest lists it as {s['split']}", _ROWS))
    return problems


def _problems(path: str, problems: list[tuple]) -> str:
    """One line: each distinct problem once with the first file it hit (and how many more),
    then the fix."""
    groups: dict = {}
    for uri, what, kind in problems:
        groups.setdefault((what, kind), []).append(uri)
    parts = [f"{uris[0]}{f' (and {len(uris) - 1} more file(s))' if len(uris) > 1 else ''}: "
             f"{what}" for (what, _), uris in groups.items()]
    shown = "; ".join(parts[:3]) + (f"; and {len(parts) - 3} more" if len(parts) > 3 else "")
    kinds = {kind for _, _, kind in problems}
    fix = " ".join(k for k in (_FILE, _ROWS) if k in kinds)
    files = len({uri for uri, _, _ in problems})
    return f"{files} shard file(s) of {path} do not match its {MANIFEST}: {shown}. {fix}"


# ---------------------------------------------------------------------------------------------
# the record

def _read_json(read) -> dict:
    try:
        record = json.loads(read())
    except (OSError, ValueError):
        return {}
    ok = (isinstance(record, dict) and record.get("format") == RECORD_FORMAT
          and record.get("version") == RECORD_VERSION and isinstance(record.get("files"), dict))
    return record if ok else {}


def _read_local(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _load_records(loc: Location) -> tuple[list[dict], str | None]:
    """The file entries of the record beside the manifest and of the cache's (an entry is only
    trusted when its stat matches the file's, so either may serve), and where one is."""
    beside = _read_json(lambda: loc.read_bytes(RECORD)) if loc.exists(RECORD) else {}
    cache_path = cache_record_path(loc.uri)
    cached = _read_json(lambda: _read_local(cache_path)) if os.path.exists(cache_path) else {}
    at = loc.uri_of(RECORD) if beside else cache_path if cached else None
    return [beside.get("files", {}), cached.get("files", {})], at


def _save_record(loc: Location, record: dict, previous: str | None) -> str | None:
    """Beside the manifest (atomic locally; one PUT on S3), else in the cache; None when
    neither can be written (the check itself has passed: only the next run's shortcut is lost)."""
    blob = json.dumps(record, indent=1, sort_keys=True).encode()
    try:
        loc.write_bytes(blob, RECORD)
        return loc.uri_of(RECORD)
    except OSError:
        pass
    path = cache_record_path(loc.uri)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = new_temp_file(os.path.dirname(path))
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
        return path
    except OSError:
        return previous
