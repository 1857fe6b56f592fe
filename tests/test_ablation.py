"""Table 4 runner: designs and data checked before any training; the table's layout."""
import pytest

import lmc
from lmc.ablation import DESIGNS, format_table, run_ablation


def test_unknown_design_and_mismatched_data_fail_before_training(tmp_path, monkeypatch):
    import lmc.train

    monkeypatch.setattr(lmc.train, "train", lambda *a, **k: pytest.fail("trained anyway"))
    cfg = lmc.preset("tiny")
    with pytest.raises(ValueError, match="unknown design"):
        run_ablation(cfg, data=str(tmp_path), storage=str(tmp_path), designs=("local", "lstm"))
    with pytest.raises(FileNotFoundError, match="manifest"):
        run_ablation(cfg, data=str(tmp_path / "nothing"), storage=str(tmp_path), log=None)


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
