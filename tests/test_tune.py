"""Ray Tune sweep: the space is filtered before Ray; the tune jobs' flags; a tiny real sweep
whose ASHA stops a trial (on the session's Moving-MNIST shards)."""
import csv
import dataclasses
import json

import pytest

import lmc
from lmc.experiments.sweep import (SWEEP_RUN_DEFAULTS, SweepSettings, SweepSpace,
                                   SweepSpaceError, check_space, expand_space, max_concurrent,
                                   sweep, sweep_run)
from lmc.train import RunSettings
from pipeline import DataError, DatasetFacts

BASE = dict(img_size=32, short_len=10, long_len=12, out_len=4, width=0.0625, memory_slots=8,
            convlstm_layers=2, warmup_iterations=0, batch_size=4)


def base_cfg(**kw):
    return lmc.preset("tiny", **{**BASE, **kw})


# what the shards' manifest says: 32x32 luma, windows of 10 + 4 (train) and 10 + 6 (test)
DATA = DatasetFacts(path="shards", dataset="mmnist", channels=1, img_size=32, short_len=10,
                    train_window_len=14, test_window_len=16, rows={"train": 16, "test": 12},
                    bytes={}, shards=())


def test_space_is_filtered_to_valid_combinations():
    space = SweepSpace(memory_slots=(25, 50), short_len=(9, 10), long_len=(8, 12, 14, 15),
                       lr=(1e-4, 1e-3))
    kept, rejected = expand_space(base_cfg(), space, DATA)
    # long_len 8 < 9 and 15 > short + out are invalid configs; short_len 9 is not the shards'
    assert kept == [{"memory_slots": s, "short_len": 10, "long_len": n}
                    for s in (25, 50) for n in (12, 14)]
    reasons = {(c["short_len"], c["long_len"]): r for c, r in rejected}
    assert "long_len" in reasons[(10, 8)] and "9 <= long_len" in reasons[(10, 8)]
    assert "short_len + out_len = 14" in reasons[(10, 15)]
    assert "the shards' windows start with 10 input frames, the model feeds 9" in reasons[(9, 12)]
    assert len(rejected) == 2 * 8 - 4


def test_space_with_only_invalid_combinations_is_a_clear_error():
    space = SweepSpace(memory_slots=(25, 50, 100, 200), long_len=(20, 30, 40))
    with pytest.raises(SweepSpaceError, match=r"no valid combination(.|\n)*long_len' = 40"):
        check_space(base_cfg(), space, DATA)
    with pytest.raises(DataError, match="img_size: the shards hold 32x32 frames, the model "
                                        "expects 64x64"):
        check_space(base_cfg(img_size=64), SweepSpace(long_len=(12,)), DATA)
    with pytest.raises(SweepSpaceError, match="log-uniform"):
        SweepSpace(lr=(1e-3, 1e-4))


def test_concurrency_from_resources():
    assert max_concurrent({"CPU": 2}, 1, 1.0, False) == 1          # one CPU kept for Ray Data
    assert max_concurrent({"CPU": 2}, 1, 0.45, False) == 2
    assert max_concurrent({"CPU": 64, "GPU": 8}, 4, 8, True) == 2
    assert max_concurrent({"CPU": 1}, 2, 1, False) == 1


def test_tune_job_flags_lists_for_the_swept_fields_one_value_for_the_others(load_job,
                                                                         monkeypatch):
    """jobs/tune_*.py: the swept fields take lists (`--memory-slots 4 8`), every other config
    field its own single-value flag."""
    import lmc.experiments.sweep

    calls = []
    monkeypatch.setattr(lmc.experiments.sweep, "sweep", lambda cfg, space, settings, **kw:
                        calls.append((cfg, space, settings)) or {})
    job = load_job("tune_mmnist")
    argv = ["--data", "d", "--storage", "s", "--name", "sw", "--preset", "tiny",
            "--img-size", "32", "--out-len", "10", "--iterations", "8", "--memory-slots", "4",
            "8", "--long-len", "9", "12", "--short-len", "10", "--lr", "1e-4", "1e-3"]
    job.main(argv)
    [(cfg, space, settings)] = calls
    assert cfg == lmc.preset("tiny", img_size=32, out_len=10, iterations=8)
    assert (list(space.memory_slots), list(space.long_len), list(space.short_len),
            list(space.lr), space.lr_log_uniform) == ([4, 8], [9, 12], [10], [1e-4, 1e-3], True)
    # the sweep holds the trials' RunSettings, its flags generated from RunSettings' fields
    # with the sweep's defaults, and its own flags from SweepSettings'
    assert settings == SweepSettings(sweep_run(data="d", storage="s", name="sw"))
    assert settings.run == RunSettings(data="d", storage="s", name="sw", num_workers=1,
                                       eval_every=10, eval_windows=16, max_failures=1,
                                       num_to_keep=1, artifacts=False)
    job.main(["--data", "d", "--storage", "s", "--num-workers", "2", "--gpus",
              "--cpus-per-worker", "0.5", "--eval-every", "5", "--eval-windows", "8",
              "--autocast", "bf16", "--num-samples", "3", "--max-concurrent-trials", "2",
              "--metric", "val_psnr", "--grace-period", "4", "--reduction-factor", "3",
              "--trial-retries", "0", "--search-seed", "7"])
    settings = calls[-1][2]
    assert settings == SweepSettings(
        sweep_run(data="d", storage="s", num_workers=2, use_gpu=True, cpus_per_worker=0.5,
                  eval_every=5, eval_windows=8, autocast="bf16"),
        num_samples=3, max_concurrent_trials=2, metric="val_psnr", grace_period=4,
        reduction_factor=3, trial_retries=0, search_seed=7)
    assert settings.run.name == "sweep"
    # a trial's run: in the sweep's folder, a checkpoint per validation, the final test on
    # the validation's windows (unless set)
    trial = settings.trial(100, "s/sweep", "train-1")
    assert (trial.storage, trial.name, trial.checkpoint_every, trial.test_windows) == (
        "s/sweep", "train-1", 5, 8)
    assert dataclasses.replace(trial, storage="s", name="sweep", checkpoint_every=None,
                               test_windows=None) == settings.run


def test_sweep_settings_errors_have_the_one_format():
    run = sweep_run(data="d", storage="s")
    assert (run.num_workers, run.eval_every, run.name) == (SWEEP_RUN_DEFAULTS["num_workers"],
                                                          10, "sweep")
    with pytest.raises(lmc.ConfigError) as e:
        SweepSettings(run, reduction_factor=1)
    assert str(e.value) == ("sweep setting 'reduction_factor' = 1 is invalid; allowed: an "
                            "integer >= 2")
    with pytest.raises(lmc.ConfigError, match=r"^sweep setting 'metric' = 'mse' is invalid; "
                                              r"allowed: None .* val_mse \| val_mae"):
        SweepSettings(run, metric="mse")
    with pytest.raises(lmc.ConfigError, match=r"^sweep setting 'run' = \{'data': 'd'\} is "
                                              r"invalid; allowed: a RunSettings"):
        SweepSettings({"data": "d"})
    with pytest.raises(lmc.ConfigError, match=r"^run setting 'name' = 'a/b' is invalid; "):
        sweep_run(data="d", storage="s", name="a/b")


@pytest.fixture(scope="module", autouse=True)
def free_stopped_trials():
    """Ray Train V2 frees an ASHA-stopped trial's worker placement group through the dashboard's
    state API, which this test session runs without (see lmc.experiments.sweep). Remove what
    this module leaves behind so that later tests, in any order, get the cluster's CPUs back
    (Ray's public placement-group API: the table by id, a handle from the id, remove)."""
    yield
    import ray
    from ray.util.placement_group import PlacementGroup

    if not ray.is_initialized():
        return
    for pg_id, info in ray.util.placement_group_table().items():
        if info["state"] == "CREATED" and pg_id not in _PGS_BEFORE:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))


_PGS_BEFORE: set = set()


@pytest.fixture
def shards(mmnist_shards):
    """The session's Moving-MNIST shards (conftest): 32x32, 16 train windows of 10 + 4,
    12 test windows of 10 + 6."""
    return mmnist_shards


def test_invalid_space_fails_before_any_ray_work(shards, tmp_path, monkeypatch):
    from ray import tune

    monkeypatch.setattr(tune, "Tuner", lambda *a, **k: pytest.fail("started a Tuner"))
    with pytest.raises(SweepSpaceError, match="no valid combination"):
        sweep(base_cfg(), SweepSpace(long_len=(20, 40)),
              SweepSettings(sweep_run(data=shards, storage=str(tmp_path))), log=None)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_tiny_sweep_asha_stops_the_worse_trial(shards, tmp_path):
    """Two trials, one at a time: lr 1e-2 trains first, then lr 1e-7 (no learning) reports a
    worse val_mse at iteration 1 and ASHA (grace 1, reduction 2) stops it there."""
    import ray
    _PGS_BEFORE.update(ray.util.placement_group_table())
    space = SweepSpace(memory_slots=(8,), long_len=(12,), lr=(1e-2, 1e-7), lr_log_uniform=False)
    settings = SweepSettings(sweep_run(data=shards, storage=str(tmp_path), name="sw",
                                       eval_every=1, eval_windows=4, cpus_per_worker=1.0),
                             grace_period=1, reduction_factor=2, max_concurrent_trials=1)
    result = sweep(base_cfg(iterations=3), space, settings, log=None)
    rows = result["trials"]
    assert len(rows) == 2 and result["metric"] == "val_mse"
    best, worst = rows
    assert best["lr"] == pytest.approx(1e-2) and not best["stopped_early"]
    assert best["iteration"] == 3 and best["reports"] == 3
    assert worst["lr"] == pytest.approx(1e-7) and worst["stopped_early"]
    assert worst["iteration"] == 1 and worst["metric"] > best["metric"]
    # outputs under the same storage: Tune's state, the trials' Train runs, table, config, plot
    exp = tmp_path / "sw"
    cfg = lmc.LMCConfig.from_json(str(exp / "best_config.json"))
    assert cfg == base_cfg(iterations=3, lr=1e-2)
    table = list(csv.DictReader(open(exp / "results.csv")))
    assert [float(r["lr"]) for r in table] == pytest.approx([1e-2, 1e-7])
    # the baselines on the same validation windows: the same for both trials, in the table
    assert set(best["baselines"]) == {"copy_last", "zeros"}
    assert best["baselines"] == pytest.approx(worst["baselines"])
    assert float(table[0]["copy_last_val_mse"]) == pytest.approx(best["baselines"]["copy_last"],
                                                                  rel=1e-5)
    assert table[0]["beats_baselines"] == str(best["beats_baselines"])
    assert (exp / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    runs = sorted(p.name for p in exp.iterdir() if p.name.startswith("train-"))
    assert len(runs) == 2
    finished = exp / f"train-{best['trial_id']}"
    assert json.loads((finished / "metrics.json").read_text())["iterations"] == 3
