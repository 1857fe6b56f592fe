"""Checked data (docs/design.md §5): shard files are verified against the manifest before a job reads
them (size, sha256 once per file change, the rows' shape against the manifest's config), and the
loaders refuse rows the manifest does not describe. Real shards (conftest's session datasets),
copied before tampering."""
import json
import os
import shutil
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import pipeline
from pipeline import DataError, iter_test_windows, iter_train_batches, verify_dataset
from pipeline.integrity import cache_record_path
from pipeline.shards import MANIFEST, RECORD
from pipeline.storage import Location


@pytest.fixture
def data(mmnist_shards, tmp_path):
    """A private copy of the session's Moving-MNIST shards (32x32, 16 train windows of 14 frames,
    12 test windows of 16), without any record a previous test left."""
    out = tmp_path / "mm"
    shutil.copytree(mmnist_shards, out)
    (out / RECORD).unlink(missing_ok=True)
    return out


def shard_files(data, split):
    m = json.loads((data / MANIFEST).read_text())
    return [s for s in m["shards"] if s["split"] == split]


def edit_manifest(data, **config):
    m = json.loads((data / MANIFEST).read_text())
    m["config"].update(config)
    (data / MANIFEST).write_text(json.dumps(m))


def test_intact_data_verifies_once_then_from_the_record(data):
    lines = []
    first = verify_dataset(str(data), ("train", "test"), log=lines.append)
    n = len(shard_files(data, "train")) + len(shard_files(data, "test"))
    assert (first.files, first.hashed, first.from_record) == (n, n, 0)
    assert first.bytes_hashed == sum(os.path.getsize(data / s["path"])
                                     for s in shard_files(data, "train") + shard_files(data, "test"))
    assert first.record == f"{data}/{RECORD}" and (data / RECORD).exists()
    assert lines == [str(first)] and lines[0].startswith(f"verified {n} shard file(s)")
    second = verify_dataset(pipeline.DatasetFacts.read(str(data)), ("train", "test"), log=None)
    assert (second.files, second.hashed, second.bytes_hashed, second.from_record) == (n, 0, 0, n)
    # one split only: its files, still from the record; the other split's entries are kept
    test = verify_dataset(str(data), ("test",), log=None)
    assert (test.files, test.hashed) == (len(shard_files(data, "test")), 0)
    assert len(json.loads((data / RECORD).read_text())["files"]) == n
    with pytest.raises(DataError, match=r"split\(s\) \['val'\]"):
        verify_dataset(str(data), ("val",), log=None)


def test_a_test_file_swapped_for_a_train_file_is_named(data):
    verify_dataset(str(data), ("test",), log=None)      # recorded as intact before the swap
    test, train = shard_files(data, "test")[0], shard_files(data, "train")[0]
    shutil.copyfile(data / train["path"], data / test["path"])
    with pytest.raises(DataError) as e:
        verify_dataset(str(data), ("test",), log=None)
    msg = str(e.value)
    assert f"{data}/{test['path']}" in msg and f"the manifest says {test['bytes']}" in msg
    assert "prepare the data again" in msg
    # the train split alone is still fine
    verify_dataset(str(data), ("train",), log=None)


def test_a_truncated_shard_is_named_with_both_sizes(data):
    s = shard_files(data, "train")[0]
    with open(data / s["path"], "r+b") as f:
        f.truncate(s["bytes"] - 100)
    with pytest.raises(DataError, match=rf"{data}/{s['path']}: {s['bytes'] - 100} bytes, the "
                                        rf"manifest says {s['bytes']} \(truncated"):
        verify_dataset(str(data), ("train", "test"), log=None)


def test_same_size_other_contents_is_a_checksum_mismatch_even_after_a_record(data):
    verify_dataset(str(data), ("train", "test"), log=None)
    s = shard_files(data, "test")[-1]
    path = data / s["path"]
    stat = os.stat(path)
    path.write_bytes(bytes(s["bytes"]))                  # zeros, same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # even with the old mtime
    with pytest.raises(DataError) as e:
        verify_dataset(str(data), ("train", "test"), log=None)
    assert f"{data}/{s['path']}: sha256 " in str(e.value)
    assert f"the manifest says {s['sha256'][:16]}" in str(e.value)
    # a bad file is not recorded as verified: the next run hashes (and refuses) it again
    with pytest.raises(DataError, match="sha256"):
        verify_dataset(str(data), ("test",), log=None)


def test_a_rewritten_file_is_hashed_again(data):
    verify_dataset(str(data), ("train", "test"), log=None)
    s = shard_files(data, "train")[0]
    path = data / s["path"]
    time.sleep(0.01)
    path.write_bytes(path.read_bytes())                 # same contents, new write
    report = verify_dataset(str(data), ("train", "test"), log=None)
    assert report.hashed == 1 and report.bytes_hashed == s["bytes"]
    assert verify_dataset(str(data), ("train", "test"), log=None).hashed == 0


def test_read_only_data_keeps_its_record_in_the_cache(data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LMC_CACHE", str(cache))
    os.chmod(data, 0o555)
    if os.geteuid() == 0:     # root writes into a 0555 folder: refuse as the OS would for others
        write = Location.write_bytes

        def refuse(self, blob, *parts):
            if self.root == str(data):
                raise PermissionError(13, "Permission denied", self.path(*parts))
            return write(self, blob, *parts)

        monkeypatch.setattr(Location, "write_bytes", refuse)
    try:
        first = verify_dataset(str(data), ("train", "test"), log=None)
        assert not (data / RECORD).exists()
        assert first.record == cache_record_path(str(data))
        assert first.record.startswith(str(cache / "verified"))
        assert json.loads(open(first.record).read())["data"] == str(data)
        second = verify_dataset(str(data), ("train", "test"), log=None)
        assert second.hashed == 0 and second.from_record == first.files
    finally:
        os.chmod(data, 0o755)


def test_an_edited_manifest_is_caught_by_verify_and_by_the_loaders(data):
    edit_manifest(data, img_size=64)                     # the rows hold 32x32
    with pytest.raises(DataError) as e:
        verify_dataset(str(data), ("test",), log=None)
    n = len(shard_files(data, "test"))
    assert (f"{n} shard file(s) of {data} do not match its manifest.json: {data}/test/part-"
            in str(e.value))
    more = f" (and {n - 1} more file(s))" if n > 1 else ""
    assert (f"{more}: its rows hold height=32, width=32, the manifest's config says height=64, "
            "width=64. The manifest and the shards disagree" in str(e.value))
    with pytest.raises(DataError, match=r"the shard rows hold height=32, width=32 but "
                                        rf"{data}/manifest.json says height=64, width=64: the "
                                        r"manifest and the shards disagree"):
        next(iter_test_windows(str(data), batch_size=4))
    # from the record too: the file did not change, the manifest did
    edit_manifest(data, img_size=32)
    verify_dataset(str(data), ("test",), log=None)
    edit_manifest(data, test_out_len=9)
    with pytest.raises(DataError, match=r"num_frames=16, the manifest's config says num_frames=19"):
        verify_dataset(str(data), ("test",), log=None)
    with pytest.raises(DataError, match=r"num_frames=16 but .* says num_frames=19"):
        next(iter_test_windows(str(data), batch_size=4))


class _Batches:
    """A stand-in for a Ray DataIterator over one shard file (numpy batches of its rows)."""

    def __init__(self, path):
        self.table = pq.read_table(path)

    def iter_batches(self, *, batch_size, **_):
        for i in range(0, self.table.num_rows - batch_size + 1, batch_size):
            part = self.table.slice(i, batch_size)
            yield {k: np.array(part[k].to_pylist(), dtype=object if k == "frames" else None)
                   for k in ("frames", "num_frames", "height", "width", "channels")}


def test_train_batches_check_the_expected_shape(data):
    facts = pipeline.DatasetFacts.read(str(data))
    rows = _Batches(data / shard_files(data, "train")[0]["path"])
    kw = dict(batch_size=2, window_len=12, seed=0, local_shuffle_buffer_size=0)
    x = next(iter_train_batches(rows, expect=facts.row_shape("train"), **kw))
    assert x.shape == (2, 12, 1, 32, 32) and x.dtype == torch.float32
    with pytest.raises(DataError, match=r"the shard rows hold height=32, width=32 but the caller "
                                        r"says height=64, width=64"):
        next(iter_train_batches(rows, expect={"channels": 1, "height": 64, "width": 64}, **kw))
    with pytest.raises(DataError, match=r"windows of 14 frames; 15"):
        next(iter_train_batches(rows, **{**kw, "window_len": 15}))


def test_evaluate_job_on_a_swapped_test_file_is_one_error_line(data, tmp_path, load_job, capsys):
    import lmc
    from lmc.checkpoint import save_checkpoint

    cfg = lmc.preset("tiny", img_size=32, short_len=10, long_len=12, out_len=4, width=0.0625,
                     memory_slots=8, convlstm_layers=2, warmup_iterations=0)
    save_checkpoint(tmp_path / "ck", lmc.LMCModel(cfg), cfg)
    test, train = shard_files(data, "test")[0], shard_files(data, "train")[0]
    shutil.copyfile(data / train["path"], data / test["path"])
    job = load_job("evaluate")
    import _job

    with pytest.raises(SystemExit) as e:
        _job.run(job.main, ["--checkpoint", str(tmp_path / "ck"), "--data", str(data),
                            "--device", "cpu", "--timing-repeats", "0", "--no-lpips"])
    msg = e.value.code      # sys.exit(str): printed on stderr, exit status 1
    assert isinstance(msg, str) and msg.startswith("error: ") and "\n" not in msg
    assert f"{data}/{test['path']}" in msg
    assert "test windows" not in capsys.readouterr().out   # nothing was scored


def test_s3_data_is_verified_and_recorded_beside_the_manifest(data, s3_env):
    for root, _, files in os.walk(data):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), data)
            s3_env.upload_file(os.path.join(root, name), "lmc", f"verify/mm/{rel}")
    uri = "s3://lmc/verify/mm"
    first = verify_dataset(uri, ("train", "test"), log=None)
    assert first.hashed == first.files > 0 and first.record == f"{uri}/{RECORD}"
    assert verify_dataset(uri, ("train", "test"), log=None).hashed == 0
    s = shard_files(data, "test")[0]
    s3_env.put_object(Bucket="lmc", Key=f"verify/mm/{s['path']}", Body=bytes(s["bytes"]))
    with pytest.raises(DataError, match=rf"{uri}/{s['path']}: sha256"):
        verify_dataset(uri, ("train", "test"), log=None)
    s3_env.put_object(Bucket="lmc", Key=f"verify/mm/{s['path']}", Body=b"short")
    with pytest.raises(DataError, match=rf"{uri}/{s['path']}: 5 bytes, the manifest says"):
        verify_dataset(uri, ("test",), log=None)
