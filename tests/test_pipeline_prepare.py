"""The Ray Data chain end to end on real encoded videos: counts, pixels, manifest rules, bad
input, every source, and the loaders."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline import (DataError, FolderSource, KTHSource, MovingMNISTSource, OutputExistsError,
                      ShardConfig, frames_from_row, iter_test_windows, iter_train_batches,
                      load_split, prepare, read_manifest, verify, write_kth_like)
from pipeline_fixtures import expected_starts, kth_segments, pyav_frames, write_bad_inputs

FRAMES = 40
CFG = ShardConfig(short_len=3, out_len=3, test_out_len=5, img_size=32, train_stride=2,
                  row_group_rows=4)


def _rows(path, split):
    m = read_manifest(path)
    files = [os.path.join(path, s["path"]) for s in m["shards"] if s["split"] == split]
    return pq.read_table(files).to_pylist() if files else []


@pytest.fixture(scope="module")
def kth_videos(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("kth"))
    write_kth_like(folder, per_action=2, num_frames=FRAMES)  # persons 1 (train), 17 (test)
    return folder


@pytest.fixture(scope="module")
def kth_shards(ray_session, kth_videos, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("kth-shards") / "ds")
    summary = prepare(KTHSource(kth_videos), out, CFG)
    return out, summary


def test_kth_windows_labels_and_pixels(kth_videos, kth_shards):
    out, summary = kth_shards
    segments = kth_segments(FRAMES)  # the sequence file is found at the input's root
    train, test = _rows(out, "train"), _rows(out, "test")
    want_train = expected_starts(segments, 6, 2)
    want_test = expected_starts(segments, 8, 8)
    names = sorted(f[:-len("_uncomp.avi")] for f in os.listdir(kth_videos) if f.endswith(".avi"))
    assert {(r["video_id"], r["start"]) for r in train} == {
        (n, s) for n in names if n.startswith("person01") for s in want_train}
    assert {(r["video_id"], r["start"]) for r in test} == {
        (n, s) for n in names if n.startswith("person17") for s in want_test}
    assert len(train) == 6 * len(want_train) and len(test) == 6 * len(want_test)
    assert summary["windows_train"] == len(train) and summary["videos_skipped"] == 0
    assert summary["frames_written"] == 6 * len(train) + 8 * len(test)
    row = next(r for r in test if r["video_id"] == "person17_running_d1" and r["start"] == 11)
    assert (row["action"], row["person"], row["scenario"]) == ("running", 17, "d1")
    assert (row["short_len"], row["out_len"], row["split"]) == (3, 5, "test")
    # Pixels: what PyAV decodes from the same file (bilinear resize, BT.601 luma), +- rounding.
    ref = pyav_frames(os.path.join(kth_videos, "person17_running_d1_uncomp.avi"), size=32)
    clip = frames_from_row(row)
    assert clip.shape == (8, 32, 32, 1)
    diff = np.abs(clip.astype(int) - ref[11:19])
    assert diff.max() <= 6 and diff.mean() < 0.3
    m = read_manifest(out)
    assert m["rows"] == {"train": len(train), "test": len(test)}
    assert m["frames"]["shape"] == ["num_frames", "height", "width", "channels"]
    assert m["config"]["short_len"] == 3 and verify(out) == []
    assert open(os.path.join(out, "errors.jsonl")).read() == ""


def test_manifest_rules_noop_refusal_overwrite_interrupt(ray_session, kth_videos, kth_shards,
                                                         tmp_path):
    out, _ = kth_shards
    before = read_manifest(out)
    again = prepare(KTHSource(kth_videos), out, CFG)
    assert again["noop"] and read_manifest(out) == before
    other = ShardConfig(**{**CFG.to_dict(), "train_stride": 3})
    with pytest.raises(OutputExistsError, match=r"different config \(train_stride: 2 -> 3\)"):
        prepare(KTHSource(kth_videos), out, other)
    assert read_manifest(out) == before  # refused before touching anything
    # A folder that is not a dataset is not written into.
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a shard dataset"):
        prepare(KTHSource(kth_videos), str(tmp_path), CFG)
    # An interrupted run (shards, no manifest) is not a dataset; the next run redoes it.
    copy = tmp_path / "copy"
    os.makedirs(copy / "train")
    (copy / "train" / "part-stale.parquet").write_bytes(b"half a file")
    with pytest.raises(DataError, match="no manifest.json"):
        load_split(str(copy), "train")
    summary = prepare(KTHSource(kth_videos), str(copy), other)
    assert not summary["noop"] and not (copy / "train" / "part-stale.parquet").exists()
    assert read_manifest(str(copy))["config"]["train_stride"] == 3
    summary = prepare(KTHSource(kth_videos), str(copy), CFG, overwrite=True)
    # Content-addressed shards: the same config gives byte-identical shards.
    assert sorted(s["sha256"] for s in read_manifest(str(copy))["shards"]) == sorted(
        s["sha256"] for s in before["shards"])


def test_bad_inputs_are_skipped_listed_and_counted(ray_session, kth_videos, tmp_path):
    folder = tmp_path / "mixed"
    os.makedirs(folder)
    good = ["person01_walking_d1_uncomp.avi", "person17_boxing_d1_uncomp.avi"]
    for name in good:
        os.symlink(os.path.join(kth_videos, name), folder / name)
    bad = write_bad_inputs(str(folder), os.path.join(kth_videos, good[0]))
    cfg = ShardConfig(**{**CFG.to_dict(), "decode_timeout_s": 60.0})
    summary = prepare(KTHSource(str(folder)), str(tmp_path / "out"), cfg)
    errors = [json.loads(l) for l in open(tmp_path / "out" / "errors.jsonl")]
    assert {os.path.basename(e["path"]) for e in errors} == set(bad)
    for e in errors:
        assert bad[os.path.basename(e["path"])] in e["reason"], e
    assert summary["videos_skipped"] == len(bad) and summary["videos_read"] == 2
    segments = [(0, FRAMES)]  # no sequence file in this folder: whole videos
    got = {(r["video_id"], r["start"]) for s in ("train", "test") for r in _rows(
        str(tmp_path / "out"), s)}
    assert got == {("person01_walking_d1", s) for s in expected_starts(segments, 6, 2)} | {
        ("person17_boxing_d1", s) for s in expected_starts(segments, 8, 8)}


def test_moving_mnist_counts_and_seeded_reproducibility(ray_session, tmp_path):
    cfg = ShardConfig(short_len=4, out_len=4, test_out_len=6, img_size=64)
    runs = [prepare(MovingMNISTSource(40, 20, seed=seed, chunk=16), str(tmp_path / name), cfg)
            for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    assert [r["windows_train"] for r in runs] == [40] * 3
    assert [r["windows_test"] for r in runs] == [20] * 3
    sha = [sorted(s["sha256"] for s in read_manifest(str(tmp_path / n))["shards"]) for n in "abc"]
    assert sha[0] == sha[1] and sha[0] != sha[2]
    test = _rows(str(tmp_path / "a"), "test")
    assert sorted(r["video_id"] for r in test) == [f"mmnist-test-{k:06d}" for k in range(20)]
    assert frames_from_row(test[0]).shape == (10, 64, 64, 1)


def test_frame_folder_source(ray_session, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "frames"
    clips = {}
    for split, vid, n in (("train", "video_00001", 9), ("train", "video_00002", 5),
                          ("test", "video_00003", 12)):
        os.makedirs(root / split / vid)
        clips[vid] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        for i, frame in enumerate(clips[vid]):  # unpadded numbers: order must be numeric
            Image.fromarray(frame).save(root / split / vid / f"frame_{i + 1}.png")
    cfg = ShardConfig(short_len=2, out_len=2, img_size=32, channels=3, train_stride=3)
    out = str(tmp_path / "out")
    prepare(FolderSource(str(root)), out, cfg)
    train, test = _rows(out, "train"), _rows(out, "test")
    assert sorted((r["video_id"], r["start"]) for r in train) == [
        ("video_00001", 0), ("video_00001", 3), ("video_00002", 0)]
    assert sorted((r["video_id"], r["start"]) for r in test) == [
        ("video_00003", 0), ("video_00003", 4), ("video_00003", 8)]
    row = next(r for r in train if r["start"] == 3)
    np.testing.assert_array_equal(frames_from_row(row), clips["video_00001"][3:7])


def test_generic_folder_via_job_script(ray_session, kth_videos, tmp_path):
    """`python jobs/prepare_videos.py` as a user runs it (joining this Ray cluster)."""
    folder = tmp_path / "clips" / "cam1"
    os.makedirs(folder)
    for name in ("person01_walking_d1_uncomp.avi", "person17_running_d1_uncomp.avi"):
        os.symlink(os.path.join(kth_videos, name), folder / name.replace("_uncomp.avi", ".avi"))
    out = tmp_path / "out"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    cmd = [sys.executable, os.path.join(repo, "jobs", "prepare_videos.py"),
           "--input", str(tmp_path / "clips"), "--output", str(out), "--split", "test",
           "--img-size", "32", "--short-len", "4", "--out-len", "6",
           "--summary-json", str(tmp_path / "s.json")]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "windows (test)" in proc.stdout
    rows = _rows(str(out), "test")
    assert sorted({r["video_id"] for r in rows}) == ["cam1/person01_walking_d1",
                                                    "cam1/person17_running_d1"]
    assert sorted(r["start"] for r in rows) == [0, 0, 10, 10, 20, 20, 30, 30]
    assert json.load(open(tmp_path / "s.json"))["windows_test"] == 8
    # bad input: the job's error policy, one line `error: <message>` and exit status 1
    bad = subprocess.run(cmd[:-2] + ["--short-len", "0"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "ShardConfig.short_len=0" in bad.stderr


def _pixels(window) -> bytes:
    """A loader window (T, C, H, W) in [0, 1] back to the stored uint8 (T, H, W, C) bytes."""
    return (window.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8).tobytes()


def test_train_batches_shapes_range_windows_and_epochs(kth_shards):
    """Float windows (N, window_len, C, H, W): each the first window_len frames of a stored
    window, unaltered; a DataIterator works as a Dataset does; epochs=None never ends; a
    window longer than the stored ones is refused. (The long clip's offset r is not the
    loader's: MemoryAlignment draws it, see test_model.)"""
    out, _ = kth_shards
    ds = load_split(out, "train")
    rows = _rows(out, "train")
    n = len(rows)
    kwargs = dict(batch_size=4, window_len=6, seed=5)
    batches = list(iter_train_batches(ds, **kwargs))
    assert len(batches) == n // 4
    for b in batches:
        assert b.shape == (4, 6, 1, 32, 32) and str(b.dtype) == "torch.float32"
        assert 0.0 <= b.min() and b.max() <= 1.0
    # Every window is a stored clip pair (uint8 / 255), shuffled but not altered; an epoch
    # holds distinct windows (drop_last leaves out n % 4 of them).
    stored = {frames_from_row(r).tobytes() for r in rows}
    seen = [_pixels(w) for b in batches for w in b]
    assert set(seen) <= stored and len(set(seen)) == len(seen) == n - n % 4
    # window_len < stored: the prefix of a stored window (short_len + out_len of a model
    # trained on longer windows)
    prefixes = {frames_from_row(r)[:4].tobytes() for r in rows}
    short = next(iter_train_batches(ds, **{**kwargs, "window_len": 4}))
    assert short.shape == (4, 4, 1, 32, 32) and all(_pixels(w) in prefixes for w in short)
    # A DataIterator (what ray.train.get_dataset_shard returns) yields the same windows.
    from_iterator = list(iter_train_batches(ds.iterator(), **kwargs))
    from_iterator = [_pixels(w) for b in from_iterator for w in b]
    assert set(from_iterator) <= stored and len(set(from_iterator)) == len(seen)
    forever = iter_train_batches(ds, epochs=None, **kwargs)
    assert sum(1 for _, _ in zip(range(len(batches) + 2), forever)) == len(batches) + 2
    with pytest.raises(ValueError, match=r"windows of 6 frames; 7 \(short_len \+ out_len\)"):
        next(iter_train_batches(ds, **{**kwargs, "window_len": 7}))


def test_test_windows_in_fixed_order_without_ray(kth_shards):
    out, _ = kth_shards
    batches = list(iter_test_windows(out, batch_size=5))
    keys = [k for b in batches for k in zip(b["video_id"], b["start"])]
    rows = {(r["video_id"], r["start"]): r for r in _rows(out, "test")}
    assert keys == sorted(rows)
    first = batches[0]
    assert first["window"].shape == (5, 8, 1, 32, 32)
    expect = frames_from_row(rows[keys[0]]).transpose(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(first["window"][0].numpy(), expect, atol=1e-6)
    short = next(iter_test_windows(out, batch_size=2, short_len=3, out_len=3))
    assert short["window"].shape == (2, 6, 1, 32, 32)
    with pytest.raises(DataError, match="split='val'"):
        next(iter_test_windows(out, batch_size=2, split="val"))


def test_import_is_cheap():
    code = "import sys, pipeline; print('ray' in sys.modules, 'torch' in sys.modules)"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert res.stdout.split() == ["False", "False"]
    assert set(pipeline.__all__) >= {"load_split", "read_manifest", "iter_train_batches",
                                     "iter_test_windows", "frames_from_row"}


def test_a_run_without_any_window_fails_and_keeps_its_errors(ray_session, kth_videos, tmp_path):
    """A prepare job whose every input is bad is a failure, not an empty dataset: it ends
    with one line naming the count and errors.jsonl, status 1; errors.jsonl and the
    manifest (0 windows: a loader says the split is empty) stay, and the next run is not a
    no-op: it prepares again (the same file names may hold fixed videos by then)."""
    from pipeline.preparation import NoWindowsError

    folder = tmp_path / "clips"
    bad = write_bad_inputs(str(folder), os.path.join(kth_videos, "person01_walking_d1_uncomp.avi"))
    for name in ("person03_boxing_d3_uncomp.avi", "person99_boxing_d1_uncomp.avi"):
        os.remove(folder / name)             # KTH-only faults (frame size, person): fine here
        del bad[name]
    out = tmp_path / "out"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    cmd = [sys.executable, os.path.join(repo, "jobs", "prepare_videos.py"), "--input",
           str(folder), "--output", str(out), "--split", "train", "--img-size", "32",
           "--short-len", "4", "--out-len", "6"]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: no usable window prepared in {out}: 6 of 6 input(s) skipped, reasons in "
        f"{out}/errors.jsonl")
    assert len(bad) == 6 and "videos skipped    6" in proc.stdout     # the table is still shown
    errors = [json.loads(line) for line in open(out / "errors.jsonl")]
    assert sorted(os.path.basename(e["path"]) for e in errors) == sorted(bad)
    assert read_manifest(str(out))["rows"] == {"train": 0, "test": 0}
    with pytest.raises(DataError, match=r"the 'train' split is empty \(0 windows\); see .*errors"):
        load_split(str(out), "train")
    # again, with any config: not "already holds this dataset", not "a different config"
    cfg = ShardConfig(short_len=4, out_len=6, img_size=32, train_stride=3)
    with pytest.raises(NoWindowsError, match=r"^no usable window prepared in .*: 6 of 6 input"):
        prepare(FolderSource(str(folder), split="train"), str(out), cfg, verbose=False)
    assert read_manifest(str(out))["config"]["train_stride"] == 3


def test_dataset_files_have_the_mode_open_gives(kth_shards):
    """manifest.json, errors.jsonl and the shards get open()'s mode (0o666 less the umask),
    not mkstemp's 0600, so that others sharing the data can read them."""
    out, _ = kth_shards
    mask = os.umask(0)
    os.umask(mask)
    files = ["manifest.json", "errors.jsonl"] + [s["path"] for s in read_manifest(out)["shards"]]
    assert {f: os.stat(os.path.join(out, f)).st_mode & 0o777 for f in files} == {
        f: 0o666 & ~mask for f in files}


def test_an_output_that_is_a_file_is_one_error_before_ray(kth_videos, tmp_path):
    """Checked before Ray starts, not met by the shard writes inside Ray tasks (a 200-line
    traceback)."""
    taken = tmp_path / "taken"
    taken.write_text("mine")
    for out, where in ((taken, "is an existing file"), (taken / "x", f"is under '{taken}', a file")):
        with pytest.raises(NotADirectoryError) as e:
            prepare(KTHSource(kth_videos), str(out), CFG, verbose=False)
        assert str(e.value) == (f"output '{out}' {where}; the output is a shard folder: name a "
                                "new or an existing folder")
    assert taken.read_text() == "mine"
