"""The speed paths against the eager model: regional compilation and the graph-captured rollout
(its eager fallback here: these tests run on CPU)."""
import copy

import pytest
import torch

import lmc
from lmc.accel import GraphedRollout, compile_problem


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return lmc.LMCModel(lmc.preset("tiny"))


@pytest.mark.slow
@pytest.mark.skipif(compile_problem("cpu") is not None, reason=str(compile_problem("cpu")))
def test_compiled_regions_match_eager_in_inference_and_training(one_thread):
    """The tiny preset with its per-timestep regions compiled (inductor, CPU): same predictions
    and same gradients as eager, to float rounding (inductor fuses the gate arithmetic)."""
    eager, compiled = tiny_model(), tiny_model()
    compiled.compile_regions()
    cfg = eager.cfg
    window = torch.rand(2, cfg.window_len, 1, cfg.img_size, cfg.img_size)
    short, long, target = window[:, :cfg.short_len], window[:, :cfg.long_len], window[:, cfg.short_len:]
    with torch.no_grad():
        torch.testing.assert_close(compiled(short), eager(short), rtol=1e-4, atol=1e-5)
    for model in (eager, compiled):
        lmc.prediction_loss(model(short, long=long), target).backward()
    for (name, a), b in zip(compiled.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6, msg=name)
    twin = copy.deepcopy(compiled)         # a copy runs its own weights, not the original's
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        eager.load_state_dict(twin.state_dict())
        torch.testing.assert_close(twin(short), eager(short), rtol=1e-4, atol=1e-5)


def test_compile_problem_names_the_missing_compiler(monkeypatch):
    monkeypatch.setattr("torch._inductor.config.cpp.cxx", (None, "/no/such/g++"))
    why = compile_problem("cpu")
    assert "C++ compiler" in why and "/no/such/g++" in why


def test_graphed_rollout_falls_back_to_the_eager_model_on_cpu(one_thread):
    model = tiny_model()
    cfg = model.cfg
    short = torch.rand(2, cfg.short_len, 1, cfg.img_size, cfg.img_size)
    rollout = GraphedRollout(model, batch=2, out_len=5)
    assert not rollout.captured
    with torch.no_grad():
        want = model(short, out_len=5)
    assert torch.equal(rollout(short), want)
    with pytest.raises(ValueError, match=r"built for short clips of shape \(2, 10, 1, 64, 64\)"):
        rollout(short[:1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_rollout_replays_the_eager_prediction_and_follows_weight_updates():
    """On a GPU: the captured rollout equals the eager model, also after the weights change in
    place (the graph reads the parameters' memory, as after an optimizer step)."""
    model = tiny_model().cuda().eval()
    cfg = model.cfg
    short = torch.rand(2, cfg.short_len, 1, cfg.img_size, cfg.img_size, device="cuda")
    rollout = GraphedRollout(model, batch=2, out_len=5)
    assert rollout.captured
    with torch.no_grad():
        torch.testing.assert_close(rollout(short), model(short, out_len=5), rtol=1e-4, atol=1e-5)
        for p in model.parameters():
            p.mul_(0.9)
        torch.testing.assert_close(rollout(short), model(short, out_len=5), rtol=1e-4, atol=1e-5)


def test_bench_gpu_cpu_smoke_prints_every_task_and_mode():
    """`benchmarks/bench_gpu.py` is ready to run as is: its CPU smoke run (tiny preset) prints
    one JSON with a row for every task x mode the GPU run measures, each with a time or the
    reason it was not measured, and FLOP counts for the achieved rates."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--cpu-smoke"], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["cuda"] is False and report["parameters"] == tiny_model().num_parameters()
    modes = {"fp32", "bf16", "bf16+channels_last", "compile+bf16"}
    rows = {(r["task"], r["batch"], r["impl"], r["mode"]): r for r in report["results"]}
    assert {m for t, b, i, m in rows if t == "train" and i == "lmc"} == modes | {"graphs"}
    assert {m for t, b, i, m in rows if t.startswith("infer") and i == "lmc" and b == 2} == \
        modes | {"graphs+bf16", "compile+graphs+bf16"}
    for row in rows.values():
        assert ("median_s" in row and row["median_s"] > 0) or row.get("skipped") or row.get("error")
    assert all(v > 0 for v in report["gflop_per_sample"].values())
