"""Ray Train driver: DDP replicas, frozen memory, failure recovery, resume, bad input.

A tiny model (width 1/16, 32x32 frames, 9 -> 3 frames) on a few synthetic KTH-like windows (the
session's `kth_train_shards`), with the session's 2-CPU Ray cluster (`ray_session`). Runs that
start a Ray Train worker group take 20-60 s each on a 2-core machine and are marked slow; hooks
trace the parameters (`lmc.train.hooks`), kill a worker or poison a batch (`fault_hooks`).
"""
import dataclasses
import glob
import json
import math
import os
import shutil

import pytest
import torch

import lmc
from lmc.alignment import NonFiniteLossError
from lmc.baselines import verdict
from lmc.reference import CheckpointError
from lmc.train import DataError, RunSettings, StorageError, train, validate
from lmc.train.hooks import TraceParameters
from fault_hooks import CrashAt, NaNInputAt

SHORT, OUT, IMG = 9, 3, 32      # the shape of conftest's kth_train_shards
CFG = lmc.preset("tiny", img_size=IMG, short_len=SHORT, out_len=OUT, long_len=10, width=0.0625,
                 memory_slots=8, batch_size=4, iterations=4)


@pytest.fixture
def shards(kth_train_shards):
    """The session's KTH-like shards (conftest): 9 + 3 frames at 32x32, train stride 2."""
    return kth_train_shards


def settings(shards, storage, name, **kw):
    base = dict(data=shards, storage=str(storage), name=name, num_workers=2, checkpoint_every=2,
                eval_windows=4, eval_batch_size=4, test_windows=8, max_failures=0)
    return RunSettings(**{**base, **kw})


def checkpoints(run_dir):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(run_dir, "checkpoint_*"))
                  if os.path.isdir(p))


# -- (a) DDP -----------------------------------------------------------------------------------

@pytest.mark.slow  # one 2-worker run: ~40 s on 2 cores
def test_ddp_replicas_identical_memory_frozen_and_run_outputs(shards, tmp_path):
    trace = tmp_path / "trace"
    m = train(CFG, settings(shards, tmp_path, "ddp"), hooks=[TraceParameters(str(trace))],
              verbose=False)
    r0 = json.loads((trace / "rank0-start0.json").read_text())
    r1 = json.loads((trace / "rank1-start0.json").read_text())
    assert len(r0) == 3 * CFG.iterations          # before, after phase 1, after phase 2
    assert r0 == r1                                # every replica, every step: same weights
    for it in range(CFG.iterations):
        before, p1, p2 = r0[3 * it:3 * it + 3]
        assert (before["phase"], p1["phase"], p2["phase"]) == (0, 1, 2)
        assert p1["memory"] != before["memory"]    # M is written in phase 1 ...
        assert p2["memory"] == p1["memory"]        # ... and bit-identical through phase 2
        assert p1["e_mm"] == before["e_mm"]        # E_MM unused in phase 1: does not move
        assert p2["e_lmc"] == p1["e_lmc"]          # E_LMC unused in phase 2: does not move
        assert p2["e_mm"] != p1["e_mm"] and p1["e_lmc"] != before["e_lmc"]
    # the run folder: checkpoints, metrics.json, TensorBoard events, pictures
    run = tmp_path / "ddp"
    assert checkpoints(run) == ["checkpoint_000000002", "checkpoint_000000004"]
    saved = lmc.checkpoint.load_model(str(run / "checkpoint_000000004"))
    assert saved.cfg == CFG
    assert m == json.loads((run / "metrics.json").read_text())
    assert m["iterations"] == CFG.iterations and m["starts"] == [0] and m["world_size"] == 2
    assert m["test"]["num_samples"] == 8 and m["protocol"] == f"{SHORT}-{OUT}"
    assert set(m["test"]["mean"]) >= {"mse", "psnr", "ssim"}
    assert len(m["test"]["per_timestep"]["psnr"]) == OUT
    assert [h["iteration"] for h in m["loss_history"]] == [1, 2, 3, 4]
    assert [v["iteration"] for v in m["validation_history"]] == [2, 4]
    assert m["last_report"]["samples_per_s"] > 0
    assert 0 <= m["last_report"]["data_wait_fraction"] <= 1
    assert glob.glob(str(run / "tensorboard" / "events.out.tfevents.*"))
    curves = (run / f"curves_{m['protocol']}.csv").read_text().splitlines()
    assert len(curves) == 1 + OUT                        # header + one row per future frame
    for f in (f"curves_{m['protocol']}.png", "prediction.png", "prediction.gif",
              "learning_curves.png"):
        assert (run / f).stat().st_size > 0
    # baselines beside the scores: same windows, so the all-zero frame's MSE is the targets'
    # energy whatever the model; copy-last and all-zero in every validation and in the verdict
    import pipeline
    windows = torch.cat([b["window"] for b in pipeline.iter_test_windows(
        shards, batch_size=8, short_len=SHORT, out_len=OUT)])[:8]     # test_windows=8
    target = windows[:, SHORT:]
    assert m["baselines"]["zeros"]["mean"]["mse"] == pytest.approx(
        target.square().sum(dim=(2, 3, 4)).mean().item(), rel=1e-6)
    copy = lmc.frame_metrics(windows[:, SHORT - 1:SHORT].expand_as(target), target)["mse"]
    assert m["baselines"]["copy_last"]["mean"]["mse"] == pytest.approx(copy.mean().item(), rel=1e-6)
    assert m["verdict"] == verdict(m["test"]["mean"],
                                   {b: r["mean"] for b, r in m["baselines"].items()})
    assert m["verdict"]["copy_last"]["line"].startswith("vs copy-last: ")
    assert m["verdict"]["zeros"]["line"].startswith("vs all-zero: ")
    for v in m["validation_history"]:
        assert {"val_mse", "val_copy_last_mse", "val_zeros_mse", "val_copy_last_psnr"} <= set(v)
    rows = (run / "learning_curves.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,") and "val_zeros_mse" in rows[0] and len(rows) == 3


# -- (b) a worker dies, (c) the same run is submitted again ---------------------------------------

@pytest.mark.slow  # two worker-group starts: ~70 s on 2 cores
def test_killed_worker_resumes_from_latest_checkpoint(shards, tmp_path):
    """Also the bf16 autocast path on CPU (DDP over gloo, a channels_last resume)."""
    marker = tmp_path / "crashed"
    cfg = dataclasses.replace(CFG, iterations=6)
    s = settings(shards, tmp_path, "crash", max_failures=2, autocast="bf16")
    m = train(cfg, s, hooks=[CrashAt(rank=1, iteration=3, marker=str(marker), after_s=8)],
              verbose=False)
    assert marker.exists()                          # rank 1's process did die (os._exit)
    assert m["settings"]["autocast"] == "bf16"
    assert m["settings"]["memory_format"] == "channels_last"
    assert all(math.isfinite(h["loss_phase1"]) and math.isfinite(h["loss_phase2"])
               for h in m["loss_history"])
    assert m["iterations"] == 6
    assert m["starts"] == [0, 2]                    # restarted from checkpoint 2, not from 0
    assert [h["iteration"] for h in m["loss_history"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow  # two single-worker runs: ~50 s on 2 cores
def test_resubmitting_the_same_name_resumes(shards, tmp_path):
    s = settings(shards, tmp_path, "again", num_workers=1)
    first = train(dataclasses.replace(CFG, iterations=2), s, verbose=False)
    assert first["starts"] == [0] and first["iterations"] == 2
    second = train(dataclasses.replace(CFG, iterations=4), s, verbose=False)
    assert second["starts"] == [0, 2] and second["iterations"] == 4
    assert checkpoints(tmp_path / "again")[-1] == "checkpoint_000000004"
    # the same run name with another architecture is refused before Ray, keys listed
    with pytest.raises(CheckpointError, match=r"mis-shaped keys .*memory\.slots"):
        validate(dataclasses.replace(CFG, memory_slots=16), s)


# -- (d) bad input: one clear error before any Ray work -------------------------------------------

def _copy(shards, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(shards, dst)
    return dst


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="no manifest.json"):
        validate(CFG, settings(str(tmp_path / "nowhere"), tmp_path, "x"))


def test_missing_shard_file_is_refused(shards, tmp_path):
    data = _copy(shards, tmp_path)
    os.remove(next(iter(glob.glob(str(data / "train" / "*.parquet")))))
    with pytest.raises(DataError, match="missing"):
        validate(CFG, settings(str(data), tmp_path, "x"))


def test_empty_split_is_refused(shards, tmp_path):
    data = _copy(shards, tmp_path)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["rows"]["train"] = 0
    manifest["shards"] = [s for s in manifest["shards"] if s["split"] != "train"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="'train' split is empty"):
        validate(CFG, settings(str(data), tmp_path, "x"))


@pytest.mark.parametrize("field,value,expect", [
    ("short_len", 10, "short_len: the shards' windows start with 9 input frames, the model "
                      "feeds 10"),
    ("img_size", 64, "img_size: the shards hold 32x32 frames, the model expects 64x64"),
    ("out_len", 5, "train windows: the shards hold 12 frames, the model needs 14"),
])
def test_shards_for_another_config_are_refused(shards, tmp_path, field, value, expect):
    cfg = dataclasses.replace(CFG, **{field: value})
    with pytest.raises(DataError, match=expect):
        validate(cfg, settings(shards, tmp_path, "x"))


def test_checkpoint_interval_defaults_to_a_third_of_the_run_at_most_1000():
    s = RunSettings(data="d", storage="s", name="n")
    assert s.checkpoint_every is None
    assert [s.checkpoint_interval(n) for n in (2, 30, 3000, 10 ** 6)] == [1, 10, 1000, 1000]
    assert RunSettings(data="d", storage="s", name="n", checkpoint_every=7).checkpoint_interval(
        3000) == 7


def test_unreachable_storage_is_refused(shards, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="cannot create or write"):
        validate(CFG, settings(shards, str(blocker / "runs"), "x"))


def test_relative_paths_reach_the_workers_absolute(tmp_path, monkeypatch):
    """The workers run in a folder of Ray Train's: `--data data/kth-shards` is resolved
    against the job's working folder on the driver; s3:// URIs stay."""
    from lmc.train.driver import absolute_paths

    monkeypatch.chdir(tmp_path)
    s = absolute_paths(RunSettings(data="data/kth-shards", storage="runs", name="n"))
    assert (s.data, s.storage) == (str(tmp_path / "data" / "kth-shards"), str(tmp_path / "runs"))
    s3 = RunSettings(data="s3://b/shards", storage="s3://b/runs", name="n")
    assert absolute_paths(s3) == s3


def test_global_batch_must_give_every_worker_a_window(shards, tmp_path):
    """Uneven splits are fine (each rank weighs its loss by its share); fewer windows than
    the most workers a run may have are not."""
    validate(dataclasses.replace(CFG, batch_size=3), settings(shards, tmp_path, "x"))
    with pytest.raises(lmc.ConfigError, match=r"config field 'batch_size' = 3 is invalid; "
                       r"allowed: at least one window per worker, >= 4 \(--num-workers 2-4\)"):
        validate(dataclasses.replace(CFG, batch_size=3),
                 settings(shards, tmp_path, "y", num_workers=(2, 4)))


@pytest.mark.slow  # one single-worker start: ~25 s
def test_nan_loss_stops_the_run_naming_iteration_and_phase(shards, tmp_path):
    s = settings(shards, tmp_path, "nan", num_workers=1, max_failures=2)
    with pytest.raises(NonFiniteLossError, match=r"iteration 1 in phase 1"):
        train(CFG, s, hooks=[NaNInputAt(1)], verbose=False)
