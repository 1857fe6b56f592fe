"""What the project leaves on a local disk: files with the mode a plain open() gives
(0o666 less the umask, not mkstemp's 0600), and no empty TensorBoard event file from an
attempt that logged nothing. Fast: no Ray."""
import glob
import os
import stat

import pytest

from pipeline.storage import Location, new_temp_file


@pytest.fixture
def umask():
    """Set the process umask for a test (restored after)."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,want", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_mode_open_gives(mask, want, umask, tmp_path):
    umask(mask)
    loc = Location.of(str(tmp_path / "run"))
    loc.write_bytes(b"{}", "metrics.json")                 # as manifest.json, errors.jsonl
    loc.write_bytes(b"{}", "sub", "manifest.json")
    assert mode(tmp_path / "run" / "metrics.json") == want
    assert mode(tmp_path / "run" / "sub" / "manifest.json") == want
    assert (tmp_path / "run" / "metrics.json").read_bytes() == b"{}"
    with open(tmp_path / "plain", "w"):
        pass
    assert mode(tmp_path / "plain") == want                  # what open() gives, exactly
    fd, path = new_temp_file(str(tmp_path), "lmc-shard-", ".parquet")   # the sink's shards
    os.close(fd)
    assert mode(path) == want and os.path.basename(path).startswith("lmc-shard-")
    assert sorted(os.listdir(tmp_path / "run")) == ["metrics.json", "sub"]   # no temp left


def test_tensorboard_event_file_only_once_a_scalar_is_written(tmp_path):
    from lmc.train.tensorboard import TensorBoard

    run = Location.of(str(tmp_path / "run"))
    events = lambda: glob.glob(str(tmp_path / "run" / "tensorboard" / "events.out.tfevents.*"))
    tb = TensorBoard(run)                       # an attempt that fails before logging
    tb.scalars(0, {"loss": float("nan"), "note": "text"})       # nothing finite: nothing written
    tb.flush()
    tb.close()
    assert events() == [] and not (tmp_path / "run").exists()
    tb = TensorBoard(run)
    tb.scalars(1, {"loss": 0.5})
    tb.scalars(2, {"loss": 0.25})
    tb.flush()
    tb.close()
    assert len(events()) == 1
    assert read_scalars(events()[0]) == [(1, "loss", 0.5), (2, "loss", 0.25)]


def read_scalars(path) -> list[tuple]:
    """(step, tag, value) of an event file's scalars (TFRecord framing: length u64, its crc
    u32, the Event proto, its crc u32)."""
    import struct

    from tensorboardX.proto import event_pb2

    data, i, out = open(path, "rb").read(), 0, []
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
        i += 12 + n + 4
    return out
