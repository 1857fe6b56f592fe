"""Memory analysis (Figure 7): known answers on constructed cases, files and shapes on real shards."""
import csv
import json
import math

import pytest
import torch
import torch.nn as nn

import lmc
from lmc.checkpoint import save_checkpoint
from lmc.tools.analysis import (analyze_memory, class_order, cosine_similarity_matrix,
                                memory_report, reduce_addressing, similarity_by_class, slot_usage)
from pipeline import DataError
P = 1 / (1 + math.exp(-2))          # softmax([1, -1])[0]: a query equal to slot 0 = -slot 1
ACROSS = 2 * P * (1 - P) / (P * P + (1 - P) ** 2)   # cos([p, 1-p], [1-p, p])


def small_cfg(**kw):
    base = dict(img_size=32, short_len=10, long_len=12, out_len=4, width=0.0625, memory_slots=8,
                convlstm_layers=2, warmup_iterations=0)
    return lmc.preset("tiny", **{**base, **kw})


class BrightnessEncoder(nn.Module):
    """A motion encoder stand-in: channel 0 of every cell is +1 for bright clips, -1 for dark."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, clip):
        n = clip.shape[0]
        z = torch.zeros(n, self.channels, 2, 2)
        z[:, 0] = torch.sign(clip.mean(dim=(1, 2, 3, 4)) - 0.5)[:, None, None]
        return z


def constructed_model(query: str):
    """Two slots, +e0 and -e0: bright clips address slot 0, dark clips slot 1, in both phases."""
    model = lmc.LMCModel(small_cfg(query=query, memory_slots=2)).eval()
    c = model.memory.slots.shape[1]
    model.motion_context_encoder = BrightnessEncoder(c)
    model.motion_matching_encoder = BrightnessEncoder(c)
    with torch.no_grad():
        model.memory.slots.zero_()
        model.memory.slots[0, 0], model.memory.slots[1, 0] = 1.0, -1.0
    return model


def constructed_clips():
    """3 bright ('jogging') and 2 dark ('boxing') windows of 16 frames, classes interleaved."""
    labels = ["jogging", "boxing", "jogging", "boxing", "jogging"]
    w = torch.stack([torch.full((16, 1, 32, 32), 0.9 if lab == "jogging" else 0.1)
                     for lab in labels])
    return w + 0.01 * torch.rand_like(w), labels


@pytest.mark.parametrize("query", ["local", "global"])
@pytest.mark.parametrize("reduce", ["flatten", "mean"])
def test_classes_that_address_distinct_slots(query, reduce, tmp_path):
    model = constructed_model(query)
    windows, labels = constructed_clips()
    s = memory_report(model, windows, labels, None, tmp_path, reduce=reduce, log=None)
    assert s["classes"] == ["boxing", "jogging"] and s["clips_per_class"] == {"boxing": 2, "jogging": 3}
    assert s["within"] == pytest.approx(1.0, abs=1e-12)
    assert s["same_clip"] == pytest.approx(1.0, abs=1e-12)
    assert s["across"] == pytest.approx(ACROSS, abs=1e-6)
    assert torch.allclose(torch.tensor(s["class_matrix"]),
                          torch.tensor([[1.0, ACROSS], [ACROSS, 1.0]]), atol=1e-6)
    q = 4 if query == "local" else 1             # (32/16)^2 cells, or one pooled query
    for phase in s["slot_usage"].values():
        assert phase["argmax_counts"] == [3 * q, 2 * q]   # jogging -> slot 0, boxing -> slot 1
        assert phase["slots_argmax"] == 2 and phase["threshold"] == 1.0
    # files: the CSV is the matrix, grouped by class (boxing first), long clips in rows
    rows = list(csv.reader(open(tmp_path / "similarity.csv")))
    assert [r[0].split(":")[1] for r in rows[1:]] == ["boxing"] * 2 + ["jogging"] * 3
    assert rows[0][1].startswith("short:boxing") and rows[1][0].startswith("long:boxing")
    m = torch.tensor([[float(x) for x in r[1:]] for r in rows[1:]])
    assert m.shape == (5, 5)
    assert torch.allclose(m[:2, :2], torch.ones(2, 2)) and torch.allclose(m[2:, 2:], torch.ones(3, 3))
    assert torch.allclose(m[:2, 2:], torch.full((2, 3), ACROSS, dtype=m.dtype), atol=1e-5)
    for name in ("similarity.png", "slot_usage.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "summary.json").read_text())["within"] == pytest.approx(1.0)
    usage = list(csv.DictReader(open(tmp_path / "slot_usage.csv")))
    assert [int(r["argmax_short"]) for r in usage] == [3 * q, 2 * q]


def test_similarity_statistics_by_hand():
    sim = torch.tensor([[1.0, 0.8, 0.1],
                        [0.6, 0.9, 0.3],
                        [0.2, 0.0, 0.5]])
    s = similarity_by_class(sim, ["a", "a", "b"])
    assert s["within"] == pytest.approx((0.8 + 0.6) / 2)          # different clips, same class
    assert s["across"] == pytest.approx((0.1 + 0.3 + 0.2 + 0.0) / 4)
    assert s["same_clip"] == pytest.approx((1.0 + 0.9 + 0.5) / 3)
    assert torch.allclose(torch.tensor(s["class_matrix"], dtype=torch.float64),
                          torch.tensor([[(1 + .8 + .6 + .9) / 4, 0.2], [0.1, 0.5]],
                                       dtype=torch.float64), atol=1e-6)
    assert math.isnan(similarity_by_class(sim, ["a", "b", "c"])["within"])
    assert class_order(["b", "a", "b", "a"]) == [1, 3, 0, 2]
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert cosine_similarity_matrix(a, a)[0, 1].item() == pytest.approx(1 / math.sqrt(2))


def test_slot_usage_and_reductions():
    addressing = torch.tensor([[[0.7, 0.2, 0.1, 0.0], [0.1, 0.6, 0.2, 0.1]],
                               [[0.6, 0.1, 0.1, 0.2], [0.3, 0.3, 0.35, 0.05]]])   # (N=2, q=2, s=4)
    u = slot_usage(addressing)
    assert u["argmax_counts"] == [2, 1, 1, 0] and u["slots_argmax"] == 3
    assert u["threshold"] == 0.5 and u["slots_above_threshold"] == 2     # slots 0 (0.7) and 1 (0.6)
    assert slot_usage(addressing, threshold=0.15)["slots_above_threshold"] == 4
    assert reduce_addressing(addressing, "flatten").shape == (2, 8)
    assert torch.allclose(reduce_addressing(addressing, "mean")[0], torch.tensor([0.4, 0.4, 0.15, 0.05]))
    with pytest.raises(ValueError, match="reduce"):
        reduce_addressing(addressing, "max")


@pytest.fixture(scope="module")
def kth_shards(ray_session, tmp_path_factory):
    """Real KTH-like videos (2 per action: persons 1 train, 17 test) -> 32x32 shards, 3 test
    windows of 10 + 6 frames per test video."""
    import pipeline

    root = tmp_path_factory.mktemp("kth")
    pipeline.write_kth_like(str(root / "videos"), per_action=2, num_frames=50, sequences=False)
    pipeline.prepare(pipeline.KTHSource(str(root / "videos")), str(root / "shards"),
                     pipeline.ShardConfig(img_size=32, short_len=10, out_len=4, test_out_len=6),
                     verbose=False)
    return str(root / "shards")


def test_analyze_memory_on_labelled_shards(kth_shards, tmp_path, load_job):
    torch.manual_seed(0)
    cfg = small_cfg()
    save_checkpoint(tmp_path / "ck", lmc.LMCModel(cfg), cfg)
    job = load_job("analyze_memory")
    job.main(["--checkpoint", str(tmp_path / "ck"), "--data", kth_shards, "--output",
              str(tmp_path / "fig7"), "--max-per-class", "2", "--device", "cpu"])
    s = json.loads((tmp_path / "fig7" / "summary.json").read_text())
    assert s["clips"] == 12 and set(s["clips_per_class"].values()) == {2}
    assert len(s["classes"]) == 6
    rows = list(csv.reader(open(tmp_path / "fig7" / "similarity.csv")))
    assert len(rows) == 13 and all(len(r) == 13 for r in rows)
    m = torch.tensor([[float(x) for x in r[1:]] for r in rows[1:]], dtype=torch.float64)
    labels = [r[0].split(":")[1] for r in rows[1:]]
    assert labels == sorted(labels)
    assert s["within"] == pytest.approx(similarity_by_class(m, labels)["within"], abs=1e-5)
    usage = s["slot_usage"]["short clips (E_MM)"]
    assert sum(usage["argmax_counts"]) == usage["num_queries"] == 12 * 4    # 4 local queries


def test_analysis_errors(kth_shards, tmp_path):
    cfg = small_cfg(query="none")
    save_checkpoint(tmp_path / "none", lmc.LMCModel(cfg), cfg)
    with pytest.raises(ValueError, match="no memory"):
        analyze_memory(tmp_path / "none", kth_shards, tmp_path / "o", log=None)
    cfg = small_cfg(long_len=14)          # 14 > 16 - 4: the long clip from frame 4 overruns
    save_checkpoint(tmp_path / "long", lmc.LMCModel(cfg), cfg)
    with pytest.raises(DataError, match=r"test windows: the shards hold 16 frames, the long clip "
                                        r"from frame 4 \(long_len 14\) needs 18"):
        analyze_memory(tmp_path / "long", kth_shards, tmp_path / "o", long_start=4, log=None)
