"""The committed small-scale reproductions (results/*/): each checkpoint, evaluated here on the
committed sample of its test windows, gives the committed numbers, and those numbers beat the
baselines as results/*/README.md says."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

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
def test_committed_summary_beats_the_baselines_it_claims_to(name):
    """The full-test-split numbers in summary.json: the model's MSE against each baseline's,
    as the targets of the issue say (Moving-MNIST at most 0.8x the better baseline; KTH-like
    below copy-last-frame in MSE and above it in PSNR)."""
    summary = json.loads((RESULTS / name / "summary.json").read_text())
    for proto, rep in summary["protocols"].items():
        base = summary["baselines"][proto]
        best = min(b["mean"]["mse"] for b in base.values())
        if name.startswith("mmnist"):
            assert rep["mean"]["mse"] <= 0.8 * best, proto
        else:
            assert rep["mean"]["mse"] < base["copy_last"]["mean"]["mse"], proto
            assert rep["mean"]["psnr"] > base["copy_last"]["mean"]["psnr"], proto
