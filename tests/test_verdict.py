"""The verdict (docs/design.md §6): the model against each baseline, metric by metric, judged by one
function (``lmc.baselines.verdict``) that every report shows: scoring's summaries (metrics.json,
evaluate's summary.json), evaluate's printed report, training's console summary, the demo's
hint, the ablation table and the tune table."""
import csv
import json
from types import SimpleNamespace

import pytest
import torch

from lmc.baselines import TIE_REL_TOL, beats_every_baseline, compare, verdict, verdict_line

# the scores of a real demo run: better MSE than copy-last, worse on everything else
MODEL = {"mse": 2.041, "mae": 18.16, "psnr": 27.78, "ssim": 0.8078}
BASE = {"copy_last": {"mse": 2.945, "mae": 12.92, "psnr": 33.15, "ssim": 0.8193},
        "zeros": {"mse": 357.0, "mae": 1020.0, "psnr": 8.3, "ssim": 0.0012}}
COPY_LINE = "vs copy-last: beats on MSE; loses on MAE, PSNR, SSIM"
ZEROS_LINE = "vs all-zero: beats on MSE, MAE, PSNR, SSIM"


def test_the_issue_example_beats_copy_last_on_mse_only():
    v = verdict(MODEL, BASE)
    assert list(v) == ["copy_last", "zeros"]
    assert v["copy_last"] == {"beats": ["mse"], "loses": ["mae", "psnr", "ssim"], "ties": [],
                              "line": COPY_LINE}
    assert v["zeros"] == {"beats": ["mse", "mae", "psnr", "ssim"], "loses": [], "ties": [],
                          "line": ZEROS_LINE}
    assert verdict_line(v) == f"{COPY_LINE} | {ZEROS_LINE}"
    assert not beats_every_baseline(v)
    assert beats_every_baseline({"zeros": v["zeros"]})
    assert not beats_every_baseline({})


def test_direction_per_metric():
    for m in ("mse", "mae", "lpips"):                     # lower is better
        assert compare(m, 1.0, 2.0) == "beats" and compare(m, 2.0, 1.0) == "loses"
    for m in ("psnr", "ssim"):                            # higher is better
        assert compare(m, 2.0, 1.0) == "beats" and compare(m, 1.0, 2.0) == "loses"
    assert compare("mse", float("nan"), 1.0) == "loses"   # a diverged model beats nothing
    with pytest.raises(ValueError, match="no direction"):
        compare("fvd", 1.0, 2.0)


def test_a_tie_is_neither_a_win_nor_a_loss():
    same = verdict(MODEL, {"copy_last": dict(MODEL)})["copy_last"]
    assert same == {"beats": [], "loses": [], "ties": ["mse", "mae", "psnr", "ssim"],
                    "line": "vs copy-last: ties on MSE, MAE, PSNR, SSIM"}
    # the committed ablation's blank-phase run against the all-zero frame: 0.04 % lower MSE is a
    # tie, not a win; its 0.4 % higher MAE is a loss
    blank = {"mse": 18.220645, "mae": 25.245587, "psnr": 17.850630, "ssim": 0.7387131}
    zeros = {"mse": 18.227701, "mae": 25.152072, "psnr": 17.848897, "ssim": 0.7387264}
    v = verdict(blank, {"zeros": zeros})["zeros"]
    assert (v["beats"], v["loses"], v["ties"]) == ([], ["mae"], ["mse", "psnr", "ssim"])
    assert v["line"] == "vs all-zero: loses on MAE; ties on MSE, PSNR, SSIM"
    # just outside the tolerance it is a win again
    assert compare("mse", 1.0, 1.0 + 2 * TIE_REL_TOL) == "beats"
    assert compare("mse", 1.0, 1.0 + TIE_REL_TOL / 2) == "ties"


def test_lpips_is_judged_when_both_sides_have_it_and_only_then():
    with_lpips = verdict({**MODEL, "lpips": 0.21},
                         {"copy_last": {**BASE["copy_last"], "lpips": 0.25}})["copy_last"]
    assert with_lpips["beats"] == ["mse", "lpips"]                       # lower is better
    assert with_lpips["line"] == "vs copy-last: beats on MSE, LPIPS; loses on MAE, PSNR, SSIM"
    worse = verdict({**MODEL, "lpips": 0.3}, {"copy_last": {**BASE["copy_last"], "lpips": 0.25}})
    assert worse["copy_last"]["loses"] == ["mae", "psnr", "ssim", "lpips"]
    # unavailable (absent from the means, or None) on either side: not judged, not a tie
    for model, base in (({**MODEL, "lpips": 0.21}, BASE["copy_last"]),
                        (MODEL, {**BASE["copy_last"], "lpips": 0.25}),
                        ({**MODEL, "lpips": None}, {**BASE["copy_last"], "lpips": None})):
        v = verdict(model, {"copy_last": base})["copy_last"]
        assert "lpips" not in v["beats"] + v["loses"] + v["ties"] and v["line"] == COPY_LINE
    assert verdict({}, {"zeros": {}})["zeros"]["line"] == "vs all-zero: no metric to compare"


# --- every consumer shows this judgement ---------------------------------------------------------

def _accumulator(protocol, mean: dict):
    """A MetricAccumulator whose means are ``mean`` (constant per-frame values, 2 samples)."""
    from lmc.metrics import MetricAccumulator

    acc = MetricAccumulator(protocol)
    acc.update({k: torch.full((2, protocol.out_len), float(v), dtype=torch.float64)
                for k, v in mean.items()})
    return acc


def _scored():
    from lmc.protocols import get_protocol
    from lmc.scoring import summarize_scores

    p = get_protocol("10-10")
    return summarize_scores({who: {p.name: _accumulator(p, mean)}
                             for who, mean in (("model", MODEL), *BASE.items())})


def test_scoring_summary_and_evaluate_report(tmp_path):
    from lmc.tools.evaluate import format_report

    scored = _scored()
    assert scored["verdict"]["10-10"] == verdict(MODEL, BASE)       # metrics.json, summary.json
    assert json.loads(json.dumps(scored))["verdict"] == scored["verdict"]
    text = format_report({**scored, "lpips": "not computed"}).splitlines()
    assert f"10-10 {COPY_LINE}" in text and f"10-10 {ZEROS_LINE}" in text
    assert not any("BEATS" in line for line in text)


def test_training_summary_and_demo_hint(capsys):
    from lmc.train.cli import print_demo_hint
    from lmc.train.driver import _print_summary

    scored = _scored()
    m = {"run": "runs/x", "protocol": "10-10", "test": scored["protocols"]["10-10"],
         "baselines": scored["baselines"]["10-10"], "verdict": scored["verdict"]["10-10"]}
    _print_summary(m)
    out = capsys.readouterr().out.splitlines()
    assert f"verdict {COPY_LINE}" in out and f"verdict {ZEROS_LINE}" in out
    # a metrics.json of an older run (a string verdict) prints the same judgement
    _print_summary({**m, "verdict": "model (MSE 2.041) BEATS copy last input frame (MSE 2.945)"})
    assert capsys.readouterr().out.splitlines() == out
    print_demo_hint(m)                     # loses to copy-last on MAE, PSNR, SSIM: says so
    assert "past both baselines on every metric" in capsys.readouterr().out
    print_demo_hint({**m, "baselines": {"zeros": m["baselines"]["zeros"]}})   # beats all: silent
    assert capsys.readouterr().out == ""


def test_ablation_table_rows(tmp_path):
    import lmc
    from lmc.experiments.ablation import format_table, table_row

    scored = _scored()
    row = table_row(lmc.preset("tiny", query="local"), "runs/t-local", "10-10",
                    scored["protocols"]["10-10"], scored["baselines"]["10-10"], "available")
    assert row["verdict"] == verdict(MODEL, BASE)
    rows = [{**row, "inference_s": None, "inference_protocol": "not timed"}]
    assert f"local: {COPY_LINE} | {ZEROS_LINE}" in format_table(rows).splitlines()
    # a committed row of an older table (a string verdict) shows the same judgement
    old = [{**rows[0], "verdict": "model (MSE 2.041) BEATS copy last input frame (MSE 2.945)"}]
    assert format_table(old) == format_table(rows)

    # results/ablation/make_table.py: the rows from finished runs' metrics.json, of any age
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "results" / "ablation" / "make_table.py"
    spec = importlib.util.spec_from_file_location("make_table", script)
    make_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_table)
    run = tmp_path / "table4-local-s1"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "config": lmc.preset("tiny", query="local").to_dict(), "run": str(run),
        "protocol": "10-10", "iterations": 2, "test": scored["protocols"]["10-10"],
        "baselines": scored["baselines"]["10-10"], "verdict": "model BEATS (an old string)"}))
    [made] = make_table.rows(str(tmp_path), "table4", [1])
    assert made["verdict"] == verdict(MODEL, BASE)


def test_tune_table_rows(tmp_path):
    from lmc.experiments.sweep import format_results, trial_rows, write_results_csv

    flat = {"val_mse": MODEL["mse"], "iteration": 3, "trial_id": "t1"}
    flat.update({f"val_{k}": v for k, v in MODEL.items()})
    flat.update({f"val_{b}_{k}": v for b, mean in BASE.items() for k, v in mean.items()})
    trial = SimpleNamespace(metrics=flat, metrics_dataframe=None, error=None,
                            config={"combo": {"memory_slots": 8, "short_len": 10,
                                              "long_len": 12}, "lr": 1e-3})
    [row] = trial_rows([trial], "val_mse", "min", iterations=3)
    assert row["verdict"] == verdict(MODEL, BASE)
    assert row["beats_baselines"] is False          # not on every metric, whatever val_mse says
    text = format_results([row], "val_mse").splitlines()
    assert text[1].split()[8] == "NO"               # the "beats" column
    assert f"t1: {COPY_LINE} | {ZEROS_LINE}" in text
    row["best_seen"] = row["metric"]
    write_results_csv([row], "val_mse", tmp_path / "results.csv")
    [saved] = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert saved["verdict"] == f"{COPY_LINE} | {ZEROS_LINE}"
    assert saved["beats_baselines"] == "False" and saved["val_mse"] == "2.041"
