"""Parity with the reference implementation (fixture: tests/data/mmnist.{npz,json}).

The reference model was run with weights set by a formula (tests/data/README in the shared
fixture): we rebuild that state dict, load it through ``from_reference_checkpoint`` (with and
without ``module.``) and compare both phases' predictions and one alignment iteration's losses.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lmc

DATA = Path(__file__).parent / "data"


def reference_state_dict(keys, prefix="module."):
    """The fixture's formula: base = sin(0.5 i + 0.7 k + 0.1), scaled per kind of tensor."""
    sd = {}
    for k, (name, shape) in enumerate(keys):
        i = np.arange(int(np.prod(shape)), dtype=np.float64)
        base = np.sin(0.5 * i + 0.7 * k + 0.1)
        if name.endswith("memory_w"):
            w = base * math.sqrt(2)
        elif len(shape) == 1:
            w = 0.1 * base
        else:
            w = base * math.sqrt(2 / np.prod(shape[1:]))
        sd[prefix + name] = torch.from_numpy(w.reshape(shape).astype(np.float32))
    return sd


@pytest.fixture(scope="module")
def fixture():
    meta = json.loads((DATA / "mmnist.json").read_text())
    arrays = np.load(DATA / "mmnist.npz")
    video = torch.from_numpy(arrays["video"]).float().div(255)[:, :, None]  # (1, 40, 1, 64, 64)
    return meta, arrays, video


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.slow
def test_reference_parity_both_phases_and_one_alignment_iteration(fixture):
    meta, arrays, video = fixture
    torch.manual_seed(0)
    cfg = lmc.preset("paper-mmnist", warmup_iterations=0)
    model = lmc.from_reference_checkpoint(reference_state_dict(meta["state_dict_keys"]), cfg)
    assert model.num_parameters() == 33_911_825

    s, r, n, k = meta["short_len"], meta["long_start"], meta["long_len"], meta["out_len"]
    short, long, target = video[:, :s], video[:, r:r + n], video[:, s:s + k]
    with torch.no_grad():
        p1 = model(short, long=long, out_len=k)
        p2 = model(short, out_len=k)
    ref1, ref2 = torch.from_numpy(arrays["pred_phase1"]), torch.from_numpy(arrays["pred_phase2"])
    assert rel(p1, ref1) < 1e-5
    assert rel(p2, ref2) < 1e-5
    # the phases differ only through the memory path: this is the part that sees M
    assert rel(p1 - p2, ref1 - ref2) < 1e-2

    align = lmc.MemoryAlignment(model, lr=2e-4, warmup_iterations=0)
    losses = align.step(video, long_start=r)
    with torch.no_grad():
        after1 = float(lmc.prediction_loss(model(short, long=long, out_len=k), target))
        after2 = float(lmc.prediction_loss(model(short, out_len=k), target))
    ref = meta["losses"]
    got = {"loss_phase1": losses["loss_phase1"], "loss_phase2": losses["loss_phase2"],
           "loss_phase1_after": after1, "loss_phase2_after": after2}
    for name, value in got.items():
        assert abs(value - ref[name]) / abs(ref[name]) < 1e-4, (name, value, ref[name])


def test_reference_keys_load_without_module_prefix_and_from_file(fixture, tmp_path):
    meta, _, _ = fixture
    sd = reference_state_dict(meta["state_dict_keys"], prefix="")
    path = tmp_path / "trained_file_300000.pt"
    torch.save(reference_state_dict(meta["state_dict_keys"]), path)
    cfg = lmc.preset("paper-mmnist")
    a = lmc.from_reference_checkpoint(sd, cfg)
    b = lmc.from_reference_checkpoint(str(path), cfg)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    # the fused gate weight is [W_x | W_h]; the biases stay the reference's two
    w_x, w_h = sd["convlstm_list.2.conv2d_x.weight"], sd["convlstm_list.2.conv2d_h.weight"]
    assert torch.equal(a.convlstm[2].weight, torch.cat([w_x, w_h], dim=1))
    assert torch.equal(a.convlstm[2].bias_h, sd["convlstm_list.2.conv2d_h.bias"])
    assert torch.equal(a.memory.slots, sd["memory.memory_w"])


def test_reference_checkpoint_errors(fixture, tmp_path):
    meta, _, _ = fixture
    sd = reference_state_dict(meta["state_dict_keys"])
    cfg = lmc.preset("paper-mmnist")

    junk = tmp_path / "notes.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(lmc.CheckpointError, match="not a readable PyTorch checkpoint"):
        lmc.from_reference_checkpoint(str(junk), cfg)

    with pytest.raises(lmc.CheckpointError, match="not found"):
        lmc.from_reference_checkpoint(str(tmp_path / "missing.pt"), cfg)

    # a pickled object that is not plain tensors is refused by weights_only, never executed
    evil = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "cfg": object.__new__(_Marker)}, evil)
    with pytest.raises(lmc.CheckpointError, match="not a readable PyTorch checkpoint"):
        lmc.from_reference_checkpoint(str(evil), cfg)

    with pytest.raises(lmc.CheckpointError, match=r"trained on 1-channel frames .* channels=3"):
        lmc.from_reference_checkpoint(sd, lmc.preset("paper-h36m"))

    broken = dict(sd)
    del broken["module.memory.memory_w"]
    broken["module.memory.extra"] = torch.zeros(3)
    with pytest.raises(lmc.CheckpointError) as e:
        lmc.from_reference_checkpoint(broken, cfg)
    msg = str(e.value)
    assert "missing keys (1): memory.slots" in msg
    assert "unexpected keys (1): memory.extra" in msg

    with pytest.raises(lmc.CheckpointError, match=r"mis-shaped keys .*memory.slots: file \(100, 512\) vs model \(50, 512\)"):
        lmc.from_reference_checkpoint(sd, lmc.preset("paper-mmnist", memory_slots=50))


class _Marker:
    pass
