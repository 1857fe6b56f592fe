"""The committed small-scale reproductions (results/*/): each checkpoint, evaluated here on the
committed sample of its test windows, gives the committed numbers (the model's and the
baselines', computed by the project's scoring code), and its whole-test-split summary is judged
by the project's verdict to beat the baselines, as results/*/README.md says."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmc.baselines import beats_every_baseline, compare, verdict, verdict_line
from lmc.checkpoint import load_model
from lmc.protocols import get_protocol
from lmc.scoring import score_windows, summarize_scores

RESULTS = Path(__file__).resolve().parents[1] / "results"
RUNS = sorted(p.parent.name for p in RESULTS.glob("*/sample_windows.npz"))


@pytest.mark.parametrize("name", RUNS)
def test_committed_checkpoint_reproduces_its_committed_numbers(name):
    folder = RESULTS / name
    expected = json.loads((folder / "sample_summary.json").read_text())
    windows = torch.from_numpy(np.load(folder / "sample_windows.npz")["windows"])  # uint8
    windows = windows.permute(0, 1, 4, 2, 3).float() / 255.0     # (N, T, C, H, W) in [0, 1]
    model = load_model(folder / "checkpoint")
    protocol = get_protocol(expected["protocol"])
    torch.manual_seed(0)
    got = summarize_scores(score_windows(model, windows.split(4), [protocol]))
    assert got["protocols"][protocol.name]["num_samples"] == expected["num_samples"] == len(windows)
    for m in ("mse", "mae", "psnr", "ssim"):
        assert got["protocols"][protocol.name]["mean"][m] == pytest.approx(
            expected["model"][m], rel=1e-4), m
        for b in ("copy_last", "zeros"):
            assert got["baselines"][protocol.name][b]["mean"][m] == pytest.approx(
                expected["baselines"][b][m], rel=1e-6), (b, m)


@pytest.mark.parametrize("name", RUNS)
def test_committed_summary_is_the_checkpoints_and_the_verdict_says_it_beats_the_baselines(name):
    """summary.json holds `jobs/evaluate.py`'s numbers on the whole test split (whose shards
    are not committed). It belongs to the committed checkpoint: that checkpoint verifies
    against its checkpoint.json and loads into the architecture of the config the summary
    names. Judged by the project's own verdict (`lmc.baselines`), the model beats both
    baselines on every metric, and on Moving-MNIST its MSE is at most 0.8x the better
    baseline's (README, Results)."""
    summary = json.loads((RESULTS / name / "summary.json").read_text())
    model = load_model(RESULTS / name / "checkpoint")
    assert model.cfg.to_dict() == summary["config"]
    for proto, rep in summary["protocols"].items():
        base = {b: v["mean"] for b, v in summary["baselines"][proto].items()}
        judged = verdict(rep["mean"], base)
        assert beats_every_baseline(judged), (proto, verdict_line(judged))
        if name.startswith("mmnist"):
            best = min(b["mse"] for b in base.values())
            assert compare("mse", rep["mean"]["mse"], 0.8 * best) in ("beats", "ties"), proto
