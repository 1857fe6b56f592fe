"""Training with its data and its run folder on S3 (moto's server on 127.0.0.1): checkpoints,
metrics and TensorBoard land in the bucket, a second submission resumes from the bucket, and
the workers (started before the S3 settings existed) get them without any log showing them.

The data are the session's KTH-like shards (conftest's kth_train_shards) copied into the bucket
as they are; preparing shards straight into S3 is test_pipeline_s3's."""
import dataclasses
import json
import os

import pytest

from lmc.train import train
from test_train import CFG, IMG, OUT, SHORT, settings

SECRET = "testing-secret-do-not-log"


@pytest.mark.slow  # two single-worker runs: ~50 s on 2 cores
def test_train_on_s3_checkpoints_and_resumes_from_the_bucket(ray_session, kth_train_shards,
                                                             s3_env, tmp_path, capsys):
    from pipeline import DatasetFacts

    for root, _, files in os.walk(kth_train_shards):     # manifest.json and train/, test/
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), kth_train_shards)
            s3_env.upload_file(os.path.join(root, f), "lmc", f"train-shards/{rel}")
    data = "s3://lmc/train-shards"
    facts = DatasetFacts.read(data)
    assert (facts.short_len, facts.test_out_len, facts.img_size) == (SHORT, OUT, IMG)

    s = settings(data, "s3://lmc/runs", "s3run", num_workers=1)
    first = train(dataclasses.replace(CFG, iterations=2), s, verbose=False)
    second = train(dataclasses.replace(CFG, iterations=4), s, verbose=False)
    assert first["starts"] == [0] and second["starts"] == [0, 2]    # resumed from the bucket
    assert second["iterations"] == 4 and second["run"] == "s3://lmc/runs/s3run"

    keys = {o["Key"] for o in s3_env.list_objects_v2(Bucket="lmc", Prefix="runs/s3run/")
            .get("Contents", [])}
    for name in ("checkpoint_000000002", "checkpoint_000000004"):
        assert {f"runs/s3run/{name}/model.pt", f"runs/s3run/{name}/config.json"} <= keys
    assert any(k.startswith("runs/s3run/tensorboard/events.out.tfevents") for k in keys)
    assert "runs/s3run/prediction.png" in keys
    metrics = json.loads(s3_env.get_object(Bucket="lmc", Key="runs/s3run/metrics.json")["Body"]
                         .read())
    assert metrics["iterations"] == 4 and len(metrics["test"]["per_timestep"]["mse"]) == OUT

    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    session = ray_session._private.worker._global_node.get_session_dir_path()
    for root, _, files in os.walk(os.path.join(session, "logs")):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                assert SECRET.encode() not in fh.read(), f"the S3 secret is in {f}"
