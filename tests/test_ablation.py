"""Table 4 runner: designs and data checked before any training; the table's layout."""
import pytest

from lmc.experiments.ablation import DESIGNS, format_table, run_ablation
from pipeline import DataError


def test_unknown_design_and_mismatched_data_fail_before_training(tmp_path, monkeypatch):
    import lmc.train

    monkeypatch.setattr(lmc.train, "train", lambda *a, **k: pytest.fail("trained anyway"))
    cfg = lmc.preset("tiny")
    with pytest.raises(ValueError, match="unknown design"):
        run_ablation(cfg, data=str(tmp_path), storage=str(tmp_path), designs=("local", "lstm"))
    with pytest.raises(DataError, match="no manifest.json"):
        run_ablation(cfg, data=str(tmp_path / "nothing"), storage=str(tmp_path), log=None)


def test_ablation_job_takes_one_flag_per_config_field(load_job, monkeypatch, capsys):
    """jobs/ablation.py: config fields by their own flags (query is the ablation's to vary),
    the designs and seeds, and the run settings passed on to every run."""
    import lmc
    import lmc.experiments.ablation

    calls = []
    monkeypatch.setattr(lmc.experiments.ablation, "run_ablation",
                        lambda cfg, **kw: calls.append((cfg, kw)) or [])
    job = load_job("ablation")
    job.main(["--data", "d", "--storage", "s", "--preset", "tiny", "--iterations", "2",
              "--img-size", "32", "--memory-slots", "8", "--lr", "1e-3", "--designs", "none",
              "local", "--seeds", "1", "2", "--checkpoint-every", "2", "--num-workers", "1"])
    [(cfg, kw)] = calls
    assert cfg == lmc.preset("tiny", iterations=2, img_size=32, memory_slots=8, lr=1e-3)
    assert (kw["data"], kw["storage"], kw["designs"], kw["seeds"]) == ("d", "s", ["none", "local"],
                                                                        [1, 2])
    assert kw["run_settings"] == {"num_workers": 1, "use_gpu": False, "checkpoint_every": 2}
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
    rows = run_ablation(dataclasses.replace(CFG, iterations=2), data=shards,
                        storage=str(tmp_path), name="t4", timing_repeats=1, log=None,
                        run_settings=dict(num_workers=1, checkpoint_every=2, eval_windows=2,
                                          test_windows=2))
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
