"""Model structure, configs and their errors, and Algorithm 1's freezing rules."""
import copy
import dataclasses

import pytest
import torch

import lmc

SMALL = dict(img_size=32, short_len=9, long_len=12, out_len=4, width=0.0625, memory_slots=8,
             convlstm_layers=2, warmup_iterations=0)


def small_cfg(**kw):
    return lmc.preset("tiny", **{**SMALL, **kw})


def test_paper_presets_have_the_reference_architecture():
    assert lmc.LMCModel(lmc.preset("paper-mmnist")).num_parameters() == 33_911_825
    assert lmc.LMCModel(lmc.preset("paper-kth")).num_parameters() == 33_911_825
    kth = lmc.preset("paper-kth")
    assert (kth.img_size, kth.short_len, kth.long_len, kth.out_len) == (128, 10, 40, 40)
    assert kth.output_activation == "sigmoid"
    h36m = lmc.preset("paper-h36m")
    assert (h36m.channels, h36m.img_size, h36m.long_len, h36m.out_len) == (3, 64, 40, 40)
    # RGB changes only the first conv of E_sp and both C3D stacks, and the last deconv
    extra = lmc.LMCModel(h36m).num_parameters() - 33_911_825
    assert extra == 64 * 2 * 9 + 2 * (64 * 2 * 27) + 64 * 2 * 9 + 2   # two more input/output channels


@pytest.mark.parametrize("query", ["local", "global", "none"])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_output_range(query, channels):
    cfg = small_cfg(query=query, channels=channels, output_activation="sigmoid")
    model = lmc.LMCModel(cfg)
    short = torch.rand(2, 9, channels, 32, 32)
    long = torch.rand(2, 12, channels, 32, 32)
    pred = model(short, out_len=6)
    assert pred.shape == (2, 6, channels, 32, 32)
    assert 0 <= pred.min() and pred.max() <= 1
    if query != "none":
        assert model(short, long=long, out_len=3).shape == (2, 3, channels, 32, 32)
        f_mem, addressing = model.memory_addressing(long, phase=1)
        queries = 4 if query == "local" else 1            # (32/16)^2 local cells or one pooled
        assert addressing.shape == (2, queries, 8)
        assert torch.allclose(addressing.sum(-1), torch.ones(2, queries))


def test_local_memory_read_is_eq_1_and_2():
    """F_mem at each cell = softmax_i(cos(z_l, m_i)) @ M, computed here by hand."""
    torch.manual_seed(0)
    model = lmc.LMCModel(small_cfg())
    clip = torch.rand(1, 9, 1, 32, 32)
    f_mem, addressing = model.memory_addressing(clip, phase=2)
    z = model.motion_matching_encoder(clip)[0]                 # (c, 2, 2)
    m = model.memory.slots
    for y in range(2):
        for x in range(2):
            q = z[:, y, x]
            cos = torch.stack([torch.dot(q, mi) / (q.norm() * mi.norm()) for mi in m])
            a = torch.exp(cos) / torch.exp(cos).sum()
            assert torch.allclose(addressing[0, y * 2 + x], a, atol=1e-6)
            assert torch.allclose(f_mem[0, :, y, x], a @ m, atol=1e-5)


def test_longer_rollout_extends_the_shorter_one():
    """Predicting 5 frames from the same short clip gives the 3-frame prediction as its first
    3 frames: a longer rollout extends the shorter one and does not change its start."""
    torch.manual_seed(0)
    model = lmc.LMCModel(small_cfg(query="none"))
    short = torch.rand(1, 9, 1, 32, 32)
    a = model(short, out_len=3)
    b = model(short, out_len=5)
    assert torch.allclose(a, b[:, :3], atol=1e-6)   # longer rollouts extend, not change, the start


def test_fused_convlstm_matches_two_convolutions():
    torch.manual_seed(0)
    cell = lmc.model.ConvLSTMCell(6, 5)
    x, h, c = torch.randn(2, 6, 8, 8), torch.randn(2, 5, 8, 8), torch.randn(2, 5, 8, 8)
    w_x, w_h = cell.weight.split([6, 5], dim=1)
    gx = torch.nn.functional.conv2d(x, w_x, cell.bias_x, padding=1)
    gh = torch.nn.functional.conv2d(h, w_h, cell.bias_h, padding=1)
    i, g, f, o = (gx + gh).chunk(4, dim=1)
    c_ref = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_ref = torch.sigmoid(o) * torch.tanh(c_ref)
    h_new, c_new = cell(x, h, c)
    assert torch.allclose(h_new, h_ref, atol=1e-6) and torch.allclose(c_new, c_ref, atol=1e-6)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_phase2_freezes_memory_and_context_encoder_phase1_freezes_matching_encoder():
    torch.manual_seed(0)
    model = lmc.LMCModel(small_cfg())
    align = lmc.MemoryAlignment(model, lr=1e-2)
    window = torch.rand(2, 13, 1, 32, 32)
    short, target, long = window[:, :9], window[:, 9:13], window[:, 1:13]
    for _ in range(2):  # a second iteration: Adam has momentum for every parameter by then
        m0, lmc0, mm0 = snapshot(model.memory), snapshot(model.motion_context_encoder), \
            snapshot(model.motion_matching_encoder)
        dec0 = snapshot(model.decoder)
        align._phase(1, short, long, target, 4)
        assert same(mm0, snapshot(model.motion_matching_encoder)), "E_MM moved in phase 1"
        assert not same(m0, snapshot(model.memory)), "M must learn in phase 1"
        assert not same(lmc0, snapshot(model.motion_context_encoder))
        m1, lmc1 = snapshot(model.memory), snapshot(model.motion_context_encoder)
        dec1 = snapshot(model.decoder)
        align._phase(2, short, None, target, 4)
        assert same(m1, snapshot(model.memory)), "M moved in phase 2"
        assert same(lmc1, snapshot(model.motion_context_encoder)), "E_LMC moved in phase 2"
        assert not same(mm0, snapshot(model.motion_matching_encoder)), "E_MM must learn in phase 2"
        assert not same(dec0, dec1) and not same(dec1, snapshot(model.decoder))


def test_alignment_step_offsets_warmup_and_determinism():
    def run(seed):
        torch.manual_seed(seed)
        model = lmc.LMCModel(small_cfg(warmup_iterations=1, warmup_out_len=2))
        align = lmc.MemoryAlignment(model, lr=1e-3)
        window = torch.rand(2, 13, 1, 32, 32, generator=torch.Generator().manual_seed(1))
        return [align.step(window) for _ in range(3)], model

    a, model_a = run(0)
    b, model_b = run(0)
    assert a == b and same(snapshot(model_a), snapshot(model_b))     # seeded: same numbers
    assert set(a[0]) == {"loss_phase1", "loss_phase2"}

    align = lmc.MemoryAlignment(lmc.LMCModel(small_cfg()))
    with pytest.raises(ValueError, match=r"long_start must be in \[0, 1\]"):
        align.step(torch.rand(1, 13, 1, 32, 32), long_start=2)
    with pytest.raises(ValueError, match=r"short_len \+ out_len = 13"):
        align.step(torch.rand(1, 12, 1, 32, 32))


def _record_long_clips(model, window):
    """Replace ``model.forward`` by a recorder of the offset r of every long clip passed in
    (phase 1), found by comparing it with ``window[:, r:r + long_len]``. It predicts zeros
    (a leaf that needs grad), so a step trains nothing and costs next to nothing."""
    offsets, n = [], model.cfg.long_len

    def spy(short, long=None, out_len=None):
        if long is not None:
            [r] = [r for r in range(window.shape[1] - n + 1)
                   if torch.equal(long, window[:, r:r + n])]
            offsets.append(r)
        return torch.zeros(short.shape[0], out_len, *short.shape[2:], requires_grad=True)

    model.forward = spy
    return offsets


def test_alignment_draws_the_long_clip_offset_from_its_seeded_generator():
    """step(window) without long_start: long = window[:, r:r + long_len] with r drawn by the
    alignment's own generator (saved with its state, so a resumed run draws on). Two
    alignments with the same seed draw the same sequence of r, which takes both values of
    {0, 1}; another seed draws another; a fresh alignment given ``state_dict()`` after 4 steps continues the sequence."""
    window = torch.rand(1, 13, 1, 32, 32, generator=torch.Generator().manual_seed(2))

    def draws(seed, steps, state=None):
        model = lmc.LMCModel(small_cfg())              # short 9 + out 4, long_len 12: r in {0, 1}
        offsets = _record_long_clips(model, window)
        align = lmc.MemoryAlignment(model, lr=1e-3, seed=seed)
        if state is not None:
            align.load_state_dict(state)
        for _ in range(steps):
            align.step(window)
        return offsets, align.state_dict()

    a, _ = draws(3, 8)
    b, _ = draws(3, 8)
    assert len(a) == 8 and a == b and set(a) == {0, 1}
    assert draws(4, 8)[0] != a
    first, state = draws(3, 4)
    rest, _ = draws(99, 4, state)                      # the seed is overridden by the state
    assert first + rest == a


def test_moments_saved_contiguous_resume_into_channels_last_weights():
    """A checkpoint keeps its tensors' layouts. Adam's moments saved contiguous (a run with
    --memory-format contiguous) and loaded beside channels_last weights get the weights'
    layout, so the resumed run is the uninterrupted one to the bit; the fused kernel would
    otherwise apply every moment of a 4-D weight to other elements, without an error."""
    window = torch.rand(2, 13, 1, 32, 32, generator=torch.Generator().manual_seed(0))

    def channels_last_model():
        torch.manual_seed(0)
        return lmc.LMCModel(small_cfg()).to_channels_last()

    model = channels_last_model()
    align = lmc.MemoryAlignment(model, lr=1e-3)
    align.step(window, long_start=0)
    weights, state = snapshot(model), copy.deepcopy(align.state_dict())
    for _ in range(2):
        align.step(window, long_start=0)

    moments = state["optimizer"]["state"].values()
    assert any(not v.is_contiguous() for m in moments for v in m.values() if v.dim() == 4)
    for m in moments:
        m.update({k: v.contiguous() for k, v in m.items()})
    resumed = channels_last_model()
    resumed.load_state_dict(weights)
    again = lmc.MemoryAlignment(resumed, lr=1e-3)
    again.load_state_dict(state)
    for _ in range(2):
        again.step(window, long_start=0)
    assert same(snapshot(resumed), snapshot(model))


def test_warmup_predicts_the_short_horizon_then_switches_to_the_full_one(monkeypatch):
    """Iterations < warmup_iterations: target = the first warmup_out_len future frames and the
    long clip = everything up to their end; after: the full horizon and long = window[r:r+N]."""
    model = lmc.LMCModel(small_cfg(warmup_iterations=2, warmup_out_len=2))
    calls = []
    orig = model.forward

    def spy(short, long=None, out_len=None):
        calls.append({"short": short.clone(), "long": None if long is None else long.clone(),
                      "out_len": out_len})
        return orig(short, long=long, out_len=out_len)

    model.forward = spy
    from lmc import alignment
    targets = []
    loss = alignment.prediction_loss
    monkeypatch.setattr(alignment, "prediction_loss",
                        lambda pred, target: (targets.append(target.clone()), loss(pred, target))[1])
    align = lmc.MemoryAlignment(model, lr=1e-3)
    window = torch.rand(2, 13, 1, 32, 32)               # short 9 + out 4; long_len 12, r in {0, 1}
    for it in range(4):
        align.step(window, long_start=1)
        p1, p2 = calls[-2:]
        torch.testing.assert_close(p1["short"], window[:, :9], rtol=0, atol=0)
        for target in targets[-2:]:                    # the frames right after the short clip
            torch.testing.assert_close(target, window[:, 9:9 + p1["out_len"]], rtol=0, atol=0)
        assert p2["long"] is None                      # phase 2 queries by the short clip
        if it < 2:
            assert p1["out_len"] == p2["out_len"] == 2
            torch.testing.assert_close(p1["long"], window[:, :11], rtol=0, atol=0)
        else:
            assert p1["out_len"] == p2["out_len"] == 4
            torch.testing.assert_close(p1["long"], window[:, 1:13], rtol=0, atol=0)
    assert align.iteration == 4


def test_non_finite_loss_names_iteration_and_phase_and_keeps_weights():
    model = lmc.LMCModel(small_cfg())
    align = lmc.MemoryAlignment(model)
    before = snapshot(model)
    window = torch.rand(1, 13, 1, 32, 32)
    window[0, 10, 0, 0, 0] = float("nan")
    with pytest.raises(lmc.NonFiniteLossError, match="iteration 0 in phase 1"):
        align.step(window, long_start=0)
    assert same(before, snapshot(model))


@pytest.mark.parametrize("field, value, allowed", [
    ("img_size", 72, "multiple of 16"),
    ("img_size", 8, "multiple of 16"),
    ("short_len", 8, ">= 9"),
    ("long_len", 51, "long_len <= short_len \\+ out_len = 50"),
    ("long_len", 5, "9 <= long_len"),
    ("channels", 2, "1 \\(grayscale\\) or 3 \\(RGB\\)"),
    ("memory_slots", 0, ">= 1"),
    ("query", "nonlocal", "local \\| global \\| none"),
    ("output_activation", "tanh", "linear \\| sigmoid"),
    ("width", 0, "\\(0, 4\\]"),
    ("lr", -1.0, "> 0"),
])
def test_invalid_configs_name_the_field_and_allowed_values(field, value, allowed):
    with pytest.raises(lmc.ConfigError, match=f"'{field}' = {value!r}.*allowed: .*{allowed}"):
        lmc.preset("paper-kth", **{field: value})
    with pytest.raises(lmc.ConfigError):   # replace() validates too
        dataclasses.replace(lmc.preset("paper-kth"), **{field: value})


def test_unknown_preset_and_field():
    with pytest.raises(lmc.ConfigError, match="allowed: paper-mmnist, paper-kth, paper-h36m, tiny"):
        lmc.preset("paper-ucf")
    with pytest.raises(lmc.ConfigError, match=r"unknown config field\(s\) \['slots'\]"):
        lmc.preset("tiny", slots=3)
    cfg = lmc.preset("paper-kth")
    assert lmc.LMCConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_model_input_is_a_clear_error():
    model = lmc.LMCModel(small_cfg())
    with pytest.raises(ValueError, match=r"'short' frames are 3x32x32 .* expects 1x32x32"):
        model(torch.rand(1, 9, 3, 32, 32))
    with pytest.raises(ValueError, match=r"'short' must be a \(N, T, C, H, W\) tensor"):
        model(torch.rand(9, 1, 32, 32))
    with pytest.raises(ValueError, match="'long' has 5 frames; this model needs >= 9"):
        model(torch.rand(1, 9, 1, 32, 32), long=torch.rand(1, 5, 1, 32, 32))


def test_channels_last_weights_get_gradients_of_their_own_layout():
    """DDP builds its gradient buckets with each parameter's strides and warns on every run
    when a gradient comes back in another layout (the grayscale decoder's 1-channel
    ConvTranspose is the case: left alone, an NCHW weight with an NHWC gradient)."""
    model = lmc.LMCModel(small_cfg()).to_channels_last()
    cfg = model.cfg
    x = torch.rand(2, cfg.short_len + cfg.out_len, cfg.channels, cfg.img_size, cfg.img_size)
    model(x[:, :cfg.short_len], long=x[:, :cfg.long_len], out_len=cfg.out_len).square().mean().backward()
    four_d = [(n, p) for n, p in model.named_parameters() if p.dim() == 4 and p.grad is not None]
    assert any(p.shape[1] == 1 for _, p in four_d)          # the 1-channel case is covered
    assert [(n, p.stride(), p.grad.stride()) for n, p in four_d
            if p.grad.stride() != p.stride()] == []
