"""Pipeline parts that need no Ray: config, windows, names, luma, decoding, Moving-MNIST."""
import sys

import numpy as np
import pytest

from pipeline import ShardConfig
from pipeline.decode import DecodeError, IsolatedDecoder, container_problem, luma
from pipeline.shards import frames_from_row
from pipeline.sources.h36m import parse_h36m_path
from pipeline.sources.kth import KTHSource, parse_kth_name, parse_sequences
from pipeline.sources.mmnist import MovingMNISTSource, load_digits
from pipeline.synthetic import encode_avi, render_frames
from pipeline.windows import frames_needed, segment_window_starts, window_starts
from pipeline_fixtures import pyav_frames


@pytest.mark.parametrize("field,value", [
    ("short_len", 0), ("out_len", -1), ("img_size", 2), ("channels", 2), ("train_stride", 0),
    ("long_len", 21), ("zstd_level", 30), ("frame_step", 1.5),
])
def test_config_rejects_invalid_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"ShardConfig\.{field}=.*allowed"):
        ShardConfig(**{field: value})


def test_config_window_lengths():
    cfg = ShardConfig(short_len=10, out_len=10, test_out_len=40)
    assert (cfg.window_len, cfg.test_window_len) == (20, 50)
    assert cfg.out_len_for("test") == 40 and cfg.out_len_for("train") == 10


def test_window_starts_exact():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(9, 4, 4) == [0, 4]        # non-overlapping, the tail is dropped
    assert window_starts(3, 4, 1) == []
    # Segments are clipped to the video (KTH's file overruns by a frame or two).
    assert segment_window_starts([(0, 6), (8, 20)], 14, 4, 2) == [0, 2, 8, 10]
    assert frames_needed([0, 2, 8, 10], 4) == [(0, 6), (8, 14)]


def test_kth_names_and_sequence_file():
    assert parse_kth_name("person05_running_d3_uncomp.avi") == {
        "person": 5, "action": "running", "scenario": "d3"}
    assert parse_kth_name("person26_running_d3_uncomp.avi") is None
    assert parse_kth_name("person05_dancing_d1_uncomp.avi") is None
    text = ("Some header text\n\nperson01_boxing_d1\t\tframes\t1-95, 96-185, 186-245\n"
            "person13_handclapping_d3   frames 1-60,  61-121\n")
    assert parse_sequences(text) == {"person01_boxing_d1": [(0, 95), (95, 185), (185, 245)],
                                     "person13_handclapping_d3": [(0, 60), (60, 121)]}


def test_h36m_paths():
    assert parse_h36m_path("S9/Videos/Walking 1.54138969.mp4") == {
        "person": 9, "action": "Walking", "scenario": "54138969"}
    assert parse_h36m_path("misc/clip.mp4") is None


def test_luma_is_bt601_not_one_channel():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30]]], np.uint8)
    assert luma(rgb)[..., 0].tolist() == [[76, 150, 29, round(0.299 * 10 + 0.587 * 200 + 0.114 * 30)]]


def test_frames_from_row_reshapes_plain_bytes():
    frames = np.arange(2 * 3 * 4 * 1, dtype=np.uint8).reshape(2, 3, 4, 1)
    row = {"frames": frames.tobytes(), "num_frames": 2, "height": 3, "width": 4, "channels": 1}
    np.testing.assert_array_equal(frames_from_row(row), frames)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "person01_walking_d1_uncomp.avi")
    encode_avi(render_frames("walking", 1, 1, 30), path)
    return path


def test_decord_frames_equal_pyav(video):
    """Native size: identical pixels; resized at decode: swscale bilinear within rounding."""
    dec = IsolatedDecoder()
    try:
        info = dec.open(video, size=160, channels=3)
        assert (info.num_frames, info.width, info.height) == (30, 160, 120)
        dec.open(video, size=32, channels=1)
        small = dec.read(0, 30)
    finally:
        dec.close()
    import decord

    native = decord.VideoReader(video).get_batch(list(range(30))).asnumpy()
    np.testing.assert_array_equal(native, pyav_frames(video, gray=False))
    ref = pyav_frames(video, size=32)
    diff = np.abs(small.astype(int) - ref)
    assert small.shape == (30, 32, 32, 1) and diff.max() <= 6 and diff.mean() < 0.3


def test_truncated_container_is_detected(video, tmp_path):
    assert container_problem(video) is None
    cut = tmp_path / "cut.avi"
    cut.write_bytes(open(video, "rb").read()[:-2000])
    assert container_problem(str(cut)).startswith("truncated")


# The decoder child, with its stdin filtered: a request naming segfault-me or stall-me crashes
# or hangs it before the real loop sees the line.
_CRASHY_CHILD = (
    "import ctypes, sys, types\n"
    "from pipeline.decode import _serve\n"
    "def lines(requests):\n"
    "    for line in requests:\n"
    "        if b'segfault-me' in line:\n"
    "            ctypes.string_at(0)  # a real segfault, as decord does on some corrupt files\n"
    "        if b'stall-me' in line:\n"
    "            import time; time.sleep(60)\n"
    "        yield line\n"
    "sys.stdin = types.SimpleNamespace(buffer=lines(sys.stdin.buffer))\n"
    "_serve()\n")


def test_decoder_crash_and_hang_become_skips_and_the_decoder_recovers(video, tmp_path):
    dec = IsolatedDecoder(timeout_s=3)
    dec.command = [sys.executable, "-c", _CRASHY_CHILD]
    try:
        with pytest.raises(DecodeError, match=r"decoder crashed \(signal SIGSEGV\)"):
            dec.open(str(tmp_path / "segfault-me.avi"), size=32, channels=1)
        with pytest.raises(DecodeError, match="timed out after 3 s"):
            dec.open(str(tmp_path / "stall-me.avi"), size=32, channels=1)
        assert dec.open(video, size=32, channels=1).num_frames == 30  # a fresh child
        assert dec.read(0, 4).shape == (4, 32, 32, 1)
    finally:
        dec.close()


def test_kth_items_labels_splits_and_bad_names(tmp_path):
    for name in ("person01_boxing_d1_uncomp.avi", "person17_running_d4_uncomp.avi",
                 "person30_boxing_d1_uncomp.avi", "readme.txt"):
        (tmp_path / name).write_bytes(b"x")
    items = {i.get("video_id", i.get("path")): i for i in KTHSource(str(tmp_path)).items()}
    assert items["person01_boxing_d1"]["split"] == "train"
    assert items["person17_running_d4"]["split"] == "test"
    assert items["person17_running_d4"]["scenario"] == "d4"
    bad = items[str(tmp_path / "person30_boxing_d1_uncomp.avi")]
    assert bad["kind"] == "error" and "file name" in bad["reason"]
    assert len(items) == 3  # readme.txt is not an input


def test_moving_mnist_is_seeded_with_disjoint_digits():
    digits = load_digits()
    train = {d.tobytes() for d in digits["train"]}
    assert len(digits["train"]) == 4000 and len(digits["test"]) == 1000
    assert not train & {d.tobytes() for d in digits["test"]}
    cfg = ShardConfig(short_len=5, out_len=5, img_size=64)
    item = {"kind": "mmnist", "split": "train", "chunk": 3, "first": 30, "count": 4}

    def rows(seed):
        src = MovingMNISTSource(8, 0, seed=seed, digits=digits)
        return [r for r in src.rows(item, cfg) if r["_kind"] == "window"]

    a, b, c = rows(0), rows(0), rows(1)
    assert [r["video_id"] for r in a] == [f"mmnist-train-{k:06d}" for k in range(30, 34)]
    assert [r["frames"] for r in a] == [r["frames"] for r in b]
    assert [r["frames"] for r in a] != [r["frames"] for r in c]
    clip = frames_from_row(a[0])
    assert clip.shape == (10, 64, 64, 1) and clip.max() > 200
    # Two digits that move: consecutive frames differ, total ink stays in 2-digit range.
    assert all((clip[t] != clip[t + 1]).any() for t in range(9))


def test_moving_mnist_rejects_small_canvas_before_any_work():
    with pytest.raises(ValueError, match="img_size=16"):
        MovingMNISTSource(1, 1).check(ShardConfig(img_size=16))
    with pytest.raises(ValueError, match="img_size=48 .* canvas_size=64"):
        MovingMNISTSource(1, 1, canvas_size=64).check(ShardConfig(img_size=48))
    with pytest.raises(ValueError, match="canvas_size=20"):
        MovingMNISTSource(1, 1, canvas_size=20)


def test_moving_mnist_on_a_larger_canvas_is_its_area_average():
    """32x32 frames from a 64x64 canvas: each pixel is the rounded mean of a 2x2 block of the
    64x64 sequence that the same seed draws."""
    digits = load_digits()
    item = {"kind": "mmnist", "split": "test", "chunk": 0, "first": 0, "count": 2}

    def clips(size, canvas, num_digits=2):
        src = MovingMNISTSource(0, 2, digits=digits, canvas_size=canvas, num_digits=num_digits)
        cfg = ShardConfig(short_len=5, out_len=5, img_size=size)
        return [frames_from_row(r) for r in src.rows(item, cfg) if r["_kind"] == "window"]

    big, small = clips(64, None), clips(32, 64)
    assert small[0].shape == (10, 32, 32, 1)
    for b, s in zip(big, small):
        want = b[..., 0].reshape(10, 32, 2, 32, 2).astype(np.float64).mean(axis=(2, 4))
        np.testing.assert_array_equal(s[..., 0], np.rint(want).astype(np.uint8))
    one = clips(64, None, num_digits=1)
    assert all((o > 0).sum() < (b > 0).sum() for o, b in zip(one, big))  # one digit: less ink


def test_h36m_items_split_by_subject(tmp_path):
    from pipeline import H36MSource

    for rel in ("S1/Videos/Walking 1.54138969.mp4", "S11/Videos/Eating.60457274.mp4",
                "S2/Videos/Walking.54138969.mp4", "S9/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    items = H36MSource(str(tmp_path)).items()
    by_id = {i.get("video_id"): i for i in items if i["kind"] == "video"}
    assert by_id["S1/Videos/Walking 1.54138969"]["split"] == "train"
    assert by_id["S11/Videos/Eating.60457274"]["split"] == "test"
    assert by_id["S11/Videos/Eating.60457274"]["action"] == "Eating"
    [err] = [i for i in items if i["kind"] == "error"]
    assert "S2" in err["reason"] and len(items) == 3


def test_moving_mnist_reads_idx_files(tmp_path):
    import gzip
    import struct

    rng = np.random.default_rng(0)
    want = {}
    for split, stem, n in (("train", "train-images-idx3-ubyte", 6),
                           ("test", "t10k-images-idx3-ubyte", 3)):
        want[split] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        with gzip.open(tmp_path / f"{stem}.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + want[split].tobytes())
    got = load_digits(str(tmp_path))
    for split in want:
        np.testing.assert_array_equal(got[split], want[split])
    with pytest.raises(FileNotFoundError, match="IDX"):
        load_digits(str(tmp_path / "missing"))


def test_shuffle_buffer_holds_a_byte_budget_of_windows():
    from pipeline import shuffle_buffer_rows

    small = 20 * 64 * 64            # a 10 + 10 window of 64x64 luma
    paper = 50 * 128 * 128          # a 10 + 40 window of KTH's 128x128
    assert shuffle_buffer_rows(small, 8) == (256 << 20) // small
    assert shuffle_buffer_rows(paper, 8) == (256 << 20) // paper == 327
    assert shuffle_buffer_rows(20 * 32 * 32, 8) == 4096                   # capped
    assert shuffle_buffer_rows(10 ** 9, 16) == 64                          # at least 4 batches
