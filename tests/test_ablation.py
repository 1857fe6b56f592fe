"""Table 4 runner: designs and data checked before any training; the table's layout."""
import pytest

from lmc.experiments.ablation import DESIGNS, format_table, run_ablation
from lmc.train import RunSettings
from pipeline import DataError


def test_unknown_design_and_mismatched_data_fail_before_training(tmp_path, monkeypatch):
    import lmc.train

    monkeypatch.setattr(lmc.train, "train", lambda *a, **k: pytest.fail("trained anyway"))
    cfg = lmc.preset("tiny")
    with pytest.raises(ValueError, match="unknown design"):
        run_ablation(cfg, RunSettings(data=str(tmp_path), storage=str(tmp_path), name="a"),
                     designs=("local", "lstm"))
    with pytest.raises(DataError, match="no manifest.json"):
        run_ablation(cfg, RunSettings(data=str(tmp_path / "nothing"), storage=str(tmp_path),
                                      name="a"), log=None)
    with pytest.raises(TypeError, match="must be a RunSettings, not dict"):
        run_ablation(cfg, {"data": str(tmp_path), "storage": str(tmp_path), "name": "a"})


def test_ablation_job_takes_one_flag_per_config_field(load_job, monkeypatch, capsys):
    """jobs/ablation.py: config fields by their own flags (query is the ablation's to vary),
    the designs and seeds, and the run settings of every run: a RunSettings from the flags
    generated from its fields (the job's defaults: name "ablation", one worker), but
    --eval-windows, the ablation's own (test windows scored)."""
    import lmc
    import lmc.experiments.ablation

    calls = []
    monkeypatch.setattr(lmc.experiments.ablation, "run_ablation",
                        lambda cfg, settings, **kw: calls.append((cfg, settings, kw)) or [])
    job = load_job("ablation")
    job.main(["--data", "d", "--storage", "s", "--preset", "tiny", "--iterations", "2",
              "--img-size", "32", "--memory-slots", "8", "--lr", "1e-3", "--designs", "none",
              "local", "--seeds", "1", "2", "--checkpoint-every", "2", "--eval-windows", "5"])
    [(cfg, settings, kw)] = calls
    assert cfg == lmc.preset("tiny", iterations=2, img_size=32, memory_slots=8, lr=1e-3)
    assert (kw["designs"], kw["seeds"], kw["eval_windows"]) == (["none", "local"], [1, 2], 5)
    assert settings == RunSettings(data="d", storage="s", name="ablation", num_workers=1,
                                   checkpoint_every=2)
    job.main(["--data", "d", "--storage", "s", "--name", "t4", "--num-workers", "2", "--gpus",
              "--keep-checkpoints", "1", "--autocast", "bf16", "--no-artifacts"])
    assert calls[-1][1] == RunSettings(data="d", storage="s", name="t4", num_workers=2,
                                       use_gpu=True, num_to_keep=1, autocast="bf16",
                                       artifacts=False)
    with pytest.raises(SystemExit):
        job.main(["--data", "d", "--storage", "s", "--query", "none"])
    assert "--query" in capsys.readouterr().err


def test_table_has_one_row_per_design():
    rows = [{"design": d, "label": DESIGNS[d], "protocol": "10-40-last10", "num_samples": 5,
             "inference_protocol": "10->40", "inference_s": 0.1 + i, "lpips": "available",
             "mean": {"psnr": 25.0 + i, "ssim": 0.85, "lpips": 0.3, "mse": 100.0}}
            for i, d in enumerate(DESIGNS)]
    text = format_table(rows)
    assert "10-40-last10" in text and "10->40" in text
    for i, d in enumerate(DESIGNS):
        line = next(x for x in text.splitlines() if x.startswith(DESIGNS[d]))
        assert f"{25.0 + i:.2f}" in line and "300.0" in line       # LPIPS x 1e-3


@pytest.mark.slow  # three single-worker runs: ~60 s on 2 cores
def test_three_designs_train_the_same_budget_and_score_the_last_frames(kth_train_shards,
                                                                       tmp_path):
    import dataclasses
    import json

    from pipeline import read_manifest
    from test_train import CFG, OUT, SHORT

    shards = kth_train_shards
    rows = run_ablation(dataclasses.replace(CFG, iterations=2),
                        RunSettings(data=shards, storage=str(tmp_path), name="t4", num_workers=1,
                                    checkpoint_every=2, eval_windows=2, test_windows=2),
                        timing_repeats=1, log=None)
    assert [r["design"] for r in rows] == ["none", "global", "local"]
    test_rows = read_manifest(shards)["rows"]["test"]
    for r in rows:
        run = json.loads((tmp_path / f"t4-{r['design']}" / "metrics.json").read_text())
        assert run["config"]["query"] == r["design"] and run["iterations"] == 2
        assert run["config"] == {**CFG.to_dict(), "iterations": 2, "query": r["design"]}
        assert r["protocol"] == f"{SHORT}-{OUT}-last{OUT}" and r["num_samples"] == test_rows
        assert r["inference_protocol"] == f"{SHORT}->{OUT}" and r["inference_s"] > 0
    none, global_, local = (r["parameters"] for r in rows)
    assert none < global_ == local               # the memory and both motion encoders
