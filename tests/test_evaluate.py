"""Evaluation: numbers equal the metrics module's on the same predictions; mismatches fail early."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch

import lmc
from lmc.checkpoint import save_checkpoint
from lmc.protocols import get_protocol, last_n_protocol
from lmc.scoring import time_inference
from lmc.tools.evaluate import evaluate, format_report
from pipeline import DataError

SMALL = dict(img_size=32, short_len=10, long_len=12, out_len=4, width=0.0625, memory_slots=8,
             convlstm_layers=2, warmup_iterations=0)


def small_cfg(**kw):
    return lmc.preset("tiny", **{**SMALL, **kw})


@pytest.fixture
def shards(mmnist_shards):
    """The session's Moving-MNIST shards (conftest): 12 test windows of 10 + 6 frames at 32x32
    (real pipeline shards)."""
    return mmnist_shards


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = small_cfg()
    model = lmc.LMCModel(cfg)
    with torch.no_grad():   # not the init's output: the last decoder conv's bias set to 0.3
        model.decoder[-2].bias.fill_(0.3)
    path = tmp_path_factory.mktemp("ckpt") / "ck"
    save_checkpoint(path, model, cfg)
    return path, model, cfg


def direct_metrics(model, data, short_len, out_len):
    """frame_metrics over every test window, computed here without lmc.tools.evaluate and
    lmc.scoring."""
    import pipeline

    per = []
    with torch.no_grad():
        for batch in pipeline.iter_test_windows(data, batch_size=5):
            w = batch["window"]
            per.append(lmc.frame_metrics(model(w[:, :short_len], out_len=out_len),
                                         w[:, short_len:short_len + out_len]))
    return {k: torch.cat([p[k] for p in per]) for k in per[0]}   # (N, out_len) each


def test_numbers_equal_frame_metrics_and_files_are_written(shards, checkpoint, tmp_path):
    path, model, cfg = checkpoint
    report = evaluate(path, shards, protocols=["10-6", "10-6-last2", "10-3"], output=tmp_path,
                      batch_size=5, device="cpu", timing_warmup=1, timing_repeats=2, log=None)
    direct = direct_metrics(model.eval(), shards, 10, 6)
    assert direct["mse"].shape == (12, 6)
    for name, frames in (("10-6", slice(0, 6)), ("10-6-last2", slice(4, 6)), ("10-3", slice(0, 3))):
        rep = report["protocols"][name]
        assert rep["num_samples"] == 12
        for m in ("mse", "mae", "psnr", "ssim"):
            want = direct[m][:, frames]
            assert rep["mean"][m] == pytest.approx(want.mean().item(), rel=1e-9)
            assert rep["per_timestep"][m] == pytest.approx(want.mean(0).tolist(), rel=1e-9)
        assert rep["timesteps"] == list(range(frames.start + 1, frames.stop + 1))
        assert "lpips" in rep.get("unavailable", {}) or "lpips" in rep["mean"]
    # LPIPS is a number or "unavailable: <reason>", never silently missing
    assert report["lpips"] == "available" or report["lpips"].startswith("unavailable: ")
    # timing: one entry per horizon, batch 1
    assert set(report["inference_time"]) == {"10->3", "10->6"}
    assert all(t["batch_size"] == 1 and t["repeats"] == 2 and t["median_s"] > 0
               for t in report["inference_time"].values())
    # files: the JSON is the report, each CSV is its curve
    assert json.loads((tmp_path / "summary.json").read_text())["protocols"] == json.loads(
        json.dumps(report["protocols"]))
    for name in ("10-6", "10-6-last2", "10-3"):
        rows = list(csv.DictReader(open(tmp_path / f"curves_{name}.csv")))
        rep = report["protocols"][name]
        assert [int(r["timestep"]) for r in rows] == rep["timesteps"]
        assert [float(r["mse"]) for r in rows] == pytest.approx(rep["per_timestep"]["mse"], rel=1e-5)
        assert (tmp_path / f"curves_{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_max_samples_and_reference_file_with_a_config(shards, checkpoint, tmp_path):
    path, model, cfg = checkpoint
    ref = tmp_path / "model.pt"
    torch.save(model.state_dict(), ref)          # a single weights file, loaded with a config
    kw = dict(protocols=["10-6"], device="cpu", timing=False, log=None, max_samples=7)
    a = evaluate(path, shards, batch_size=5, **kw)
    b = evaluate(ref, shards, preset=cfg, batch_size=3, **kw)
    assert a["protocols"]["10-6"]["num_samples"] == b["protocols"]["10-6"]["num_samples"] == 7
    direct = direct_metrics(model.eval(), shards, 10, 6)
    for r in (a, b):
        assert r["protocols"]["10-6"]["mean"]["mse"] == pytest.approx(
            direct["mse"][:7].mean().item(), rel=1e-9)
    with pytest.raises(lmc.CheckpointError, match="preset"):
        evaluate(ref, shards, **kw)


def test_default_protocol_is_the_datas_window(shards, checkpoint):
    path, _, _ = checkpoint
    report = evaluate(path, shards, device="cpu", timing=False, log=None)
    assert list(report["protocols"]) == ["10-6"]


@pytest.mark.parametrize("change, match", [
    (dict(img_size=64), r"cannot feed the checkpoint: img_size: the shards hold 32x32 frames, "
                        r"the checkpoint expects 64x64"),
    (dict(channels=3, output_activation="sigmoid"),
     r"cannot feed the checkpoint: channels: the shards hold 1-channel frames, the checkpoint "
     r"expects 3"),
])
def test_checkpoint_that_does_not_match_the_data_is_a_clear_error(shards, tmp_path, change,
                                                                   match, monkeypatch):
    import pipeline

    cfg = small_cfg(**change)
    save_checkpoint(tmp_path / "ck", lmc.LMCModel(cfg), cfg)
    monkeypatch.setattr(pipeline, "iter_test_windows",
                        lambda *a, **k: pytest.fail("read frames before checking"), raising=False)
    with pytest.raises(DataError, match=match):
        evaluate(tmp_path / "ck", shards, log=None)


def test_protocol_longer_than_the_windows_is_a_clear_error(shards, checkpoint):
    path, _, _ = checkpoint
    with pytest.raises(DataError, match=r"test windows: the shards hold 16 frames, protocol "
                                        r"10-40 needs 50"):
        evaluate(path, shards, protocols=["10-40"], log=None)
    with pytest.raises(ValueError, match="short clips of 10") as e:
        evaluate(path, shards, protocols=["9-4"], log=None)
    assert not isinstance(e.value, DataError)       # the checkpoint's, not the data's, mismatch
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("ten-forty")


def test_protocol_helpers():
    assert last_n_protocol(10, 40).name == "10-40-last10"
    assert last_n_protocol(10, 40).frames == tuple(range(30, 40))
    assert last_n_protocol(10, 4).frames == (0, 1, 2, 3)
    assert get_protocol("10->30").out_len == 30
    p = get_protocol("10-20-last5")
    assert (p.short_len, p.out_len, p.frames) == (10, 20, tuple(range(15, 20)))


def test_time_inference_is_batch_one_after_warmup():
    model = lmc.LMCModel(small_cfg())
    calls = []
    orig = model.forward
    model.forward = lambda short, **kw: (calls.append(short.shape[0]), orig(short, **kw))[1]
    t = time_inference(model, torch.rand(3, 10, 1, 32, 32), 4, warmup=2, repeats=3)
    assert calls == [1] * 5
    assert t["protocol"] == "10->4" and t["repeats"] == 3 and math.isfinite(t["mean_s"])


def test_command_line_writes_the_summary(shards, checkpoint, tmp_path, capsys, load_job):
    path, _, _ = checkpoint
    job = load_job("evaluate")
    job.main(["--checkpoint", str(path), "--data", shards, "--output", str(tmp_path / "ev"),
              "--protocol", "10-4", "--timing-repeats", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "10-4" in out and "ms/sequence" in out
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["protocols"]["10-4"]["num_samples"] == 12


def test_baselines_are_scored_on_the_same_windows_with_the_same_metric_code(shards, checkpoint,
                                                                            tmp_path):
    path, model, _ = checkpoint
    report = evaluate(path, shards, protocols=["10-6"], output=tmp_path, batch_size=5,
                      device="cpu", timing=False, log=None)
    import pipeline

    windows = torch.cat([b["window"] for b in pipeline.iter_test_windows(shards, batch_size=5)])
    short, target = windows[:, :10], windows[:, 10:16]
    want = {"copy_last": lmc.frame_metrics(short[:, -1:].expand_as(target), target),
            "zeros": lmc.frame_metrics(torch.zeros_like(target), target)}
    base = report["baselines"]["10-6"]
    assert set(base) == {"copy_last", "zeros"}
    for name, per_frame in want.items():
        assert base[name]["num_samples"] == 12
        for m in ("mse", "mae", "ssim"):
            assert base[name]["mean"][m] == pytest.approx(per_frame[m].mean().item(), rel=1e-9)
            assert base[name]["per_timestep"][m] == pytest.approx(per_frame[m].mean(0).tolist(),
                                                                  rel=1e-9)
    # the all-zero frame's MSE is the targets' energy; copy-last differs from it
    assert base["zeros"]["mean"]["mse"] == pytest.approx(
        target.square().sum(dim=(2, 3, 4)).mean().item(), rel=1e-6)
    # the verdict per protocol and baseline, metric by metric, consistent with the numbers
    model_mean = report["protocols"]["10-6"]["mean"]
    judged = report["verdict"]["10-6"]
    assert set(judged) == {"copy_last", "zeros"}
    for name, label in (("copy_last", "copy-last"), ("zeros", "all-zero")):
        v = judged[name]
        assert sorted(v["beats"] + v["loses"] + v["ties"]) == sorted(model_mean)   # each once
        for m in v["beats"]:
            assert (model_mean[m] < base[name]["mean"][m]) == (m in ("mse", "mae", "lpips")), m
        for m in v["loses"]:
            assert (model_mean[m] > base[name]["mean"][m]) == (m in ("mse", "mae", "lpips")), m
        assert v["line"].startswith(f"vs {label}: ")
        assert format_report(report).count(f"10-6 {v['line']}") == 1
    # summary.json carries them; the CSV has one column per baseline and metric
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["verdict"] == {"10-6": judged}
    assert saved["baselines"] == json.loads(json.dumps(report["baselines"]))
    rows = list(csv.DictReader(open(tmp_path / "curves_10-6.csv")))
    assert [float(r["copy_last_mse"]) for r in rows] == pytest.approx(
        base["copy_last"]["per_timestep"]["mse"], rel=1e-5)
    assert [float(r["zeros_psnr"]) for r in rows] == pytest.approx(
        base["zeros"]["per_timestep"]["psnr"], rel=1e-5)


def test_an_exact_frame_is_capped_in_means_and_counted():
    from lmc.metrics import PSNR_CAP_DB, MetricAccumulator

    target = torch.rand(2, 3, 1, 8, 8)
    pred = target.clone()
    pred[0, 1:] = 0.5              # sample 0: frame 0 exact, frames 1-2 not; sample 1: exact
    per_frame = lmc.frame_metrics(pred, target)
    assert math.isinf(per_frame["psnr"][0, 0])               # per frame: +inf, like skimage
    acc = MetricAccumulator(get_protocol("10-3"))
    acc.update(per_frame)
    s = acc.summary()
    assert s["psnr_capped_frames"] == 4
    finite = per_frame["psnr"][0, 1:]
    assert s["mean"]["psnr"] == pytest.approx((4 * PSNR_CAP_DB + finite.sum().item()) / 6)
    assert math.isfinite(s["mean"]["psnr"])


def test_exported_half_precision_checkpoint_loads_as_the_rounded_weights(checkpoint, tmp_path):
    from lmc.checkpoint import MODEL_FILE, export_weights, load_model

    path, model, cfg = checkpoint
    out = export_weights(path, tmp_path / "small")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.json", "config.json", "model.pt"]
    assert (out / MODEL_FILE).stat().st_size < 0.6 * (Path(path) / MODEL_FILE).stat().st_size
    loaded = load_model(out)
    assert loaded.cfg == cfg
    for (name, want), got in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got, want.half().float(), rtol=0, atol=0)
    with pytest.raises(lmc.CheckpointError, match="config.json is missing"):
        export_weights(tmp_path / "nothing", tmp_path / "x")
