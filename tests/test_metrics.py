"""lmc.metrics against independent references: scikit-image SSIM, numpy MSE/MAE/PSNR, lpips."""
import os
import socket
import zlib

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from lmc.metrics import (
    ALEXNET_WEIGHTS_FILE,
    LPIPSMetric,
    LPIPSUnavailable,
    LPIPSUnavailableError,
    MetricAccumulator,
    frame_metrics,
    load_lpips,
    lpips_status,
    lpips_weights_path,
    summarize,
)
from lmc.protocols import PROTOCOLS


def skimage_ssim(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Reference: per-frame skimage SSIM of (N, T, C, H, W) float64 arrays -> (N, T)."""
    n, t, c = pred.shape[:3]
    out = np.empty((n, t))
    for i in range(n):
        for j in range(t):
            p, g = pred[i, j], target[i, j]  # (C, H, W)
            if c == 1:
                out[i, j] = structural_similarity(p[0], g[0], data_range=1)
            else:
                out[i, j] = structural_similarity(
                    p.transpose(1, 2, 0), g.transpose(1, 2, 0), data_range=1, channel_axis=-1
                )
    return out


def real_looking(n: int, t: int, size: int = 64, seed: int = 0):
    """Smooth gaussian blobs on a gradient (target) and a shifted, noised copy (prediction)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    target = np.empty((n, t, 1, size, size))
    pred = np.empty_like(target)
    for i in range(n):
        for j in range(t):
            img = 0.3 * xx + 0.1 * yy
            for _ in range(3):
                cy, cx, s = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
                img = img + 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
            img = np.clip(img, 0, 1)
            target[i, j, 0] = img
            shifted = np.roll(img, shift=(1 + j % 3, 2), axis=(0, 1))
            pred[i, j, 0] = np.clip(shifted + rng.normal(0, 0.03, img.shape), 0, 1)
    return torch.from_numpy(pred).float(), torch.from_numpy(target).float()


# --------------------------------------------------------------------------------------------
# SSIM equals scikit-image's structural_similarity(data_range=1)

@pytest.mark.parametrize(
    "kind, shape",
    [
        ("uniform", (2, 3, 1, 32, 32)),
        ("real", (2, 3, 1, 64, 64)),
        ("uniform-rgb", (2, 2, 3, 32, 32)),
        ("real-rgb", (1, 2, 3, 64, 64)),
        ("non-square", (2, 2, 1, 24, 40)),
        ("non-square-rgb", (1, 2, 3, 40, 17)),
        ("minimal-7x7", (1, 2, 1, 7, 7)),
    ],
)
def test_ssim_matches_skimage(kind, shape):
    g = torch.Generator().manual_seed(zlib.crc32(kind.encode()))  # stable across runs
    if kind.startswith("real"):
        n, t, c, h, w = shape
        pred, target = real_looking(n, t * c, size=h)
        pred = pred.reshape(shape)
        target = target.reshape(shape)
    else:
        target = torch.rand(shape, generator=g)
        pred = (target + 0.2 * torch.randn(shape, generator=g)).clamp(0, 1)
    got = frame_metrics(pred, target)["ssim"]
    assert got.shape == shape[:2] and got.dtype == torch.float64
    want = skimage_ssim(pred.double().numpy(), target.double().numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)
    # the frames are really different, so the check is not trivially 1 == 1
    assert (want < 0.999).all()


def test_ssim_of_identical_frames_is_one():
    x = torch.rand(1, 2, 1, 16, 16)
    assert torch.allclose(frame_metrics(x, x)["ssim"], torch.ones(1, 2, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# MSE / MAE / PSNR against numpy; clamping of the prediction

def test_mse_mae_psnr_match_numpy_and_clamp_pred():
    g = torch.Generator().manual_seed(1)
    shape = (3, 4, 2, 16, 12)
    target = torch.rand(shape, generator=g)
    pred = target + 0.5 * torch.randn(shape, generator=g)  # well outside [0, 1] in places
    assert pred.min() < 0 and pred.max() > 1
    m = frame_metrics(pred, target)

    p = np.clip(pred.double().numpy(), 0, 1)
    t = target.double().numpy()
    err = p - t
    mse = (err**2).sum(axis=(2, 3, 4))  # per-frame *sum* (paper convention)
    mae = np.abs(err).sum(axis=(2, 3, 4))
    psnr = 10 * np.log10(1.0 / (err**2).mean(axis=(2, 3, 4)))
    for name, want in [("mse", mse), ("mae", mae), ("psnr", psnr)]:
        assert m[name].shape == (3, 4)
        np.testing.assert_allclose(m[name].numpy(), want, rtol=1e-5, err_msg=name)

    # without clamping the numbers would differ
    raw_mse = ((pred.double().numpy() - t) ** 2).sum(axis=(2, 3, 4))
    assert not np.allclose(m["mse"].numpy(), raw_mse, rtol=1e-3)
    # SSIM is computed on the clamped prediction, too
    np.testing.assert_allclose(
        m["ssim"].numpy(), skimage_ssim(p, t), atol=1e-5
    )


def test_psnr_of_exact_frame_is_inf():
    x = torch.rand(1, 2, 1, 8, 8)
    pred = x.clone()
    pred[0, 1] = 1 - pred[0, 1]
    psnr = frame_metrics(pred, x)["psnr"]
    assert psnr[0, 0] == float("inf") and torch.isfinite(psnr[0, 1])


# --------------------------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize(
    "pred_shape, target_shape, match",
    [
        ((2, 3, 1, 16, 16), (2, 4, 1, 16, 16), r"\(2, 3, 1, 16, 16\).*\(2, 4, 1, 16, 16\)"),
        ((3, 1, 16, 16), (3, 1, 16, 16), r"\(N, T, C, H, W\).*\(3, 1, 16, 16\)"),
        ((1, 2, 1, 6, 16), (1, 2, 1, 6, 16), r"6x16.*at least 7x7"),
    ],
)
def test_bad_shapes_raise_clear_errors(pred_shape, target_shape, match):
    with pytest.raises(ValueError, match=match):
        frame_metrics(torch.rand(pred_shape), torch.rand(target_shape))


def test_integer_frames_are_rejected():
    x = torch.zeros(1, 2, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="float.*uint8"):
        frame_metrics(x, x)


# --------------------------------------------------------------------------------------------
# protocols and accumulation

def test_accumulator_over_batches_equals_mean_over_concatenation():
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(7, 10, 1, 16, 16, generator=g)
    target = torch.rand(7, 10, 1, 16, 16, generator=g)
    acc = MetricAccumulator("10-10")
    acc.update(frame_metrics(pred[:2], target[:2]))  # uneven batches: sample-weighted
    acc.update(frame_metrics(pred[2:], target[2:]))
    got = acc.summary()
    want = summarize(frame_metrics(pred, target), "10-10")
    assert got["num_samples"] == want["num_samples"] == 7
    for k in ("mse", "mae", "psnr", "ssim"):
        assert got["mean"][k] == pytest.approx(want["mean"][k], rel=1e-12)
        np.testing.assert_allclose(got["per_timestep"][k], want["per_timestep"][k], rtol=1e-12)
        assert len(got["per_timestep"][k]) == 10
    # mean over everything, independently
    full = frame_metrics(pred, target)
    assert got["mean"]["mse"] == pytest.approx(float(full["mse"].mean()), rel=1e-12)

    # merging two half-accumulators gives the same as one
    a, b = MetricAccumulator("10-10"), MetricAccumulator("10-10")
    a.update(frame_metrics(pred[:4], target[:4]))
    b.update(frame_metrics(pred[4:], target[4:]))
    a.merge(b)
    assert a.summary()["mean"] == pytest.approx(want["mean"], rel=1e-12)


def test_protocol_last10_scores_exactly_frames_30_to_39():
    p = PROTOCOLS["10-40-last10"]
    assert (p.short_len, p.out_len, p.frames) == (10, 40, tuple(range(30, 40)))
    n = 3
    values = torch.arange(40, dtype=torch.float64).expand(n, 40).clone()  # value = frame index
    values[:, :30] = 1e9  # frames the protocol must not see
    s = summarize({"mse": values}, "10-40-last10")
    assert s["per_timestep"]["mse"] == [float(i) for i in range(30, 40)]
    assert s["timesteps"] == list(range(31, 41))
    assert s["mean"]["mse"] == pytest.approx(34.5)
    # "10->40" spelling works; the full protocol sees every frame
    assert summarize({"mse": values}, "10->40")["per_timestep"]["mse"][:2] == [1e9, 1e9]
    assert {k: (v.short_len, v.out_len, len(v.frames)) for k, v in PROTOCOLS.items()} == {
        "10-10": (10, 10, 10),
        "10-30": (10, 30, 30),
        "10-20": (10, 20, 20),
        "10-40": (10, 40, 40),
        "10-40-last10": (10, 40, 10),
    }


def test_accumulator_rejects_wrong_length_and_unknown_protocol():
    with pytest.raises(ValueError, match=r"\(2, 20\).*\(N, 40\)"):
        MetricAccumulator("10-40").update({"mse": torch.zeros(2, 20)})
    with pytest.raises(ValueError, match="unknown protocol"):
        MetricAccumulator("10-fifty")
    # any "S-K" is a protocol (all K frames scored): 10-50 wants (N, 50)
    with pytest.raises(ValueError, match=r"\(2, 40\).*\(N, 50\)"):
        MetricAccumulator("10-50").update({"mse": torch.zeros(2, 40)})


# --------------------------------------------------------------------------------------------
# LPIPS: never from random weights, never downloading

@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or download fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def use_torch_home(monkeypatch, home):
    """Point TORCH_HOME and torch.hub's dir at `home`; monkeypatch restores both afterwards."""
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored on teardown
    torch.hub.set_dir(os.path.join(str(home), "hub"))


def test_lpips_unavailable_without_weights(tmp_path, monkeypatch, no_network):
    use_torch_home(monkeypatch, tmp_path)
    checkpoints = os.path.join(str(tmp_path), "hub", "checkpoints")
    assert lpips_weights_path() == os.path.join(checkpoints, ALEXNET_WEIGHTS_FILE)

    available, reason = lpips_status()
    assert not available
    assert ALEXNET_WEIGHTS_FILE in reason and checkpoints in reason
    assert "TORCH_HOME" in reason

    lp = load_lpips("cpu")
    assert isinstance(lp, LPIPSUnavailable) and not lp and lp.reason == reason
    x = torch.rand(1, 1, 1, 32, 32)
    with pytest.raises(LPIPSUnavailableError, match=ALEXNET_WEIGHTS_FILE):
        lp(x, x)
    with pytest.raises(LPIPSUnavailableError, match=ALEXNET_WEIGHTS_FILE):
        LPIPSMetric("cpu")
    assert not os.path.exists(os.path.join(checkpoints, ALEXNET_WEIGHTS_FILE))


def test_lpips_unavailable_with_corrupt_weights(tmp_path, monkeypatch, no_network):
    use_torch_home(monkeypatch, tmp_path)
    path = lpips_weights_path()
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"this is not a torch checkpoint")
    available, reason = lpips_status()
    assert not available and "could not load" in reason and path in reason
    assert not load_lpips("cpu")


@pytest.fixture(scope="module")
def seeded_alexnet_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a *deterministically seeded, untrained* AlexNet under
    torchvision's file name. These weights only test the wiring (file lookup, loading, input
    mapping) without internet; they are not ImageNet weights and give no meaningful LPIPS."""
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        state = torchvision.models.alexnet().state_dict()
    torch.save(state, ckpt / ALEXNET_WEIGHTS_FILE)
    return home


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
def test_lpips_wrapper_equals_lpips_package(seeded_alexnet_home, monkeypatch, no_network):
    import lpips

    use_torch_home(monkeypatch, seeded_alexnet_home)
    assert lpips_status()[0]
    metric = load_lpips("cpu")
    assert isinstance(metric, LPIPSMetric)
    # the package itself, built the usual way (torchvision loads the cached file)
    direct = lpips.LPIPS(net="alex", verbose=False)

    g = torch.Generator().manual_seed(3)
    for channels in (1, 3):
        target = torch.rand(2, 3, channels, 64, 64, generator=g)
        pred = target + 0.3 * torch.randn(target.shape, generator=g)  # partly outside [0, 1]
        got = metric(pred, target)
        assert got.shape == (2, 3)

        # the inputs mapped by hand: clamp, [0, 1] -> [-1, 1], grayscale repeated to 3 channels
        x = pred.clamp(0, 1).reshape(6, channels, 64, 64) * 2 - 1
        y = target.reshape(6, channels, 64, 64) * 2 - 1
        if channels == 1:
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        with torch.no_grad():
            want = direct(x, y).reshape(2, 3).double()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert (want > 0).all()
        # identical frames give 0
        assert torch.allclose(metric(target, target), torch.zeros(2, 3, dtype=torch.float64))
