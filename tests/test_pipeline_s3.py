"""S3 round trip against a real S3-compatible server (moto's) on 127.0.0.1: raw videos in a
bucket -> Ray Data -> shards in the bucket -> loaders. Credentials are fake and env-only."""
import json
import os

from pipeline import (KTHSource, ShardConfig, iter_test_windows, load_split, prepare,
                      read_manifest, verify, write_kth_like)
from pipeline_fixtures import expected_starts, kth_segments

FRAMES = 30
CFG = ShardConfig(short_len=3, out_len=3, img_size=32, train_stride=4)


def test_s3_round_trip(ray_session, s3_env, tmp_path, capsys):
    local = tmp_path / "kth"
    write_kth_like(str(local), per_action=2, actions=("boxing", "walking"), num_frames=FRAMES)
    for name in os.listdir(local):
        s3_env.upload_file(str(local / name), "lmc", f"raw/kth/{name}")
    s3_env.put_object(Bucket="lmc", Key="raw/kth/person05_boxing_d1_uncomp.avi", Body=b"junk")

    summary = prepare(KTHSource("s3://lmc/raw/kth"), "s3://lmc/shards/kth", CFG)
    assert summary["videos_read"] == 4 and summary["videos_skipped"] == 1

    keys = {o["Key"] for o in s3_env.list_objects_v2(Bucket="lmc", Prefix="shards/kth/")["Contents"]}
    assert {"shards/kth/manifest.json", "shards/kth/errors.jsonl"} <= keys
    errors = s3_env.get_object(Bucket="lmc", Key="shards/kth/errors.jsonl")["Body"].read()
    [err] = [json.loads(line) for line in errors.splitlines()]
    assert err["path"] == "s3://lmc/raw/kth/person05_boxing_d1_uncomp.avi"

    m = read_manifest("s3://lmc/shards/kth")
    per_video = {"train": len(expected_starts(kth_segments(FRAMES), 6, 4)),
                 "test": len(expected_starts(kth_segments(FRAMES), 6, 6))}
    assert m["rows"] == {s: 2 * n for s, n in per_video.items()}
    assert all(f"shards/kth/{s['path']}" in keys for s in m["shards"])
    assert verify("s3://lmc/shards/kth") == []
    assert load_split("s3://lmc/shards/kth", "train").count() == m["rows"]["train"]
    windows = [k for b in iter_test_windows("s3://lmc/shards/kth", batch_size=3)
               for k in zip(b["video_id"], b["start"])]
    assert windows == sorted(windows) and len(windows) == m["rows"]["test"]
    assert prepare(KTHSource("s3://lmc/raw/kth"), "s3://lmc/shards/kth", CFG)["noop"]
    out = capsys.readouterr()
    assert "testing-secret-do-not-log" not in out.out + out.err
