"""Video-prediction metrics with the paper's conventions made exact (docs/design.md §6).

References:
  - Lee et al., "Video Prediction Recalling Long-term Motion Context via Memory Alignment
    Learning", CVPR 2021 (LMC-Memory): Tables 1-2 report per-frame MSE, PSNR, SSIM and LPIPS
    averaged over the future frames; Table 4 also scores only the last 10 of 40 frames.
  - Wang et al., "Image quality assessment: from error visibility to structural similarity",
    TIP 2004 (SSIM), in scikit-image's `structural_similarity` convention.
  - Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
    CVPR 2018 (LPIPS), through the `lpips` package with the AlexNet trunk.

Conventions (every function below follows them):
  - Inputs are (N, T, C, H, W) float tensors in [0, 1]; N samples, T future frames. The
    prediction is clamped to [0, 1] first; the target is used as given.
  - Every metric is computed per sample and per future frame -> (N, T), then averaged over
    samples and over the protocol's frames (`summarize`, `MetricAccumulator`).
  - MSE / MAE: *sums* over the pixels of a frame (= mean x C x H x W), as the paper reports
    (Moving-MNIST 10->30 MSE 73.2 is a per-frame sum, not a per-pixel mean).
  - PSNR: 10 log10(1 / per-frame mean squared error), data range 1, then averaged over frames
    (the mean of per-frame PSNRs, not the PSNR of the mean error). An exact frame (mse == 0)
    gives +inf per frame, like `skimage.metrics.peak_signal_noise_ratio`. Means cap each frame
    at `PSNR_CAP_DB` = 100 dB (as video-codec tools do): copy-last-frame hits an exact frame
    whenever the video repeats a frame (MPEG-4 does), and one +inf would make the mean +inf.
    100 dB is far above any real prediction (one grey level of error on every pixel is 48 dB),
    so the cap changes nothing else; summaries count the capped frames.
  - SSIM: equal to `skimage.metrics.structural_similarity(p, t, data_range=1)` (with
    `channel_axis=-1` for C > 1) within 1e-5: 7x7 uniform window, K1 = 0.01, K2 = 0.03, sample
    covariance (49/48), mean over the interior that skimage keeps after cropping 3 px from each
    border, per channel, then averaged over channels. The reference implementation relied on an
    old default data range of 2; we use 1.
  - LPIPS: `lpips.LPIPS(net="alex")`, inputs mapped to [-1, 1], grayscale repeated to 3 channels.
    The AlexNet trunk weights come from the torch hub cache; where they are missing or unreadable,
    LPIPS is *unavailable* (with the reason and how to provide the file), never a number computed
    from random weights.

Plain PyTorch, no Ray: works on CPU and GPU tensors, batched over N x T frames.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F

from .protocols import Protocol, get_protocol

__all__ = [
    "frame_metrics",
    "ssim",
    "summarize",
    "MetricAccumulator",
    "LPIPSMetric",
    "LPIPSUnavailable",
    "LPIPSUnavailableError",
    "load_lpips",
    "lpips_status",
    "lpips_weights_path",
    "ALEXNET_WEIGHTS_FILE",
]

# SSIM constants: scikit-image's `structural_similarity` defaults.
SSIM_WIN = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 1.0
PSNR_CAP_DB = 100.0   # per-frame cap inside means (an exact frame is +inf dB)

# Frames per chunk in the SSIM / LPIPS loops: bounds the float64 working set
# (5 maps x chunk x C x H x W x 8 bytes ~ 84 MB for 128x128 grayscale).
_CHUNK = 128


# ---------------------------------------------------------------------------------------------
# input checks

def _check_pair(pred: torch.Tensor, target: torch.Tensor, min_size: int = 1) -> None:
    """Clear errors for the (N, T, C, H, W) contract, naming the shapes."""
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError(
            f"pred and target must be torch tensors, got {type(pred).__name__} and "
            f"{type(target).__name__}"
        )
    if pred.ndim != 5 or target.ndim != 5:
        raise ValueError(
            "pred and target must be (N, T, C, H, W) tensors; got pred shape "
            f"{tuple(pred.shape)} and target shape {tuple(target.shape)}"
        )
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: pred {tuple(pred.shape)} vs target "
            f"{tuple(target.shape)} (both must be (N, T, C, H, W))"
        )
    if not pred.is_floating_point() or not target.is_floating_point():
        raise ValueError(
            f"pred and target must be float tensors in [0, 1]; got {pred.dtype} and "
            f"{target.dtype} (convert uint8 frames with x.float() / 255)"
        )
    if pred.device != target.device:
        raise ValueError(f"pred is on {pred.device} but target is on {target.device}")
    h, w = pred.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(
            f"frames are {h}x{w} (shape {tuple(pred.shape)}); SSIM's {SSIM_WIN}x{SSIM_WIN} "
            f"window needs frames of at least {min_size}x{min_size}"
        )


def _compute_device(x: torch.Tensor) -> torch.device:
    # float64 is not supported on MPS: compute there on the CPU instead.
    return torch.device("cpu") if x.device.type == "mps" else x.device


# ---------------------------------------------------------------------------------------------
# per-frame metrics

def _ssim_frames(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of B frame pairs (B, C, H, W) float64 -> (B,), skimage's convention.

    skimage filters with a 7x7 uniform filter (reflect padding) and then crops (7-1)//2 = 3 px
    from every border before averaging; what is left is exactly where the window lies inside the
    frame, so a 'valid' 7x7 average pool gives the same local statistics.
    """
    b, c = x.shape[:2]
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5C, H, W)
    stats = F.avg_pool2d(stats, SSIM_WIN, stride=1)  # (B, 5C, H-6, W-6), local means
    ux, uy, uxx, uyy, uxy = stats.split(c, dim=1)  # each (B, C, H-6, W-6)
    n = SSIM_WIN * SSIM_WIN
    cov_norm = n / (n - 1)  # sample covariance
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    # mean over the interior per channel, then over channels == mean over (C, H-6, W-6)
    return s.reshape(b, -1).mean(dim=1)  # (B,)


@torch.no_grad()
def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM, (N, T, C, H, W) x2 -> (N, T) float64.

    Equal to `skimage.metrics.structural_similarity(p, t, data_range=1)` per frame (with
    `channel_axis=-1` on (H, W, C) arrays when C > 1) within 1e-5; computed in float64. `pred` is
    NOT clamped here (`frame_metrics` clamps). Frames smaller than 7x7 raise ValueError.
    """
    _check_pair(pred, target, min_size=SSIM_WIN)
    n, t, c, h, w = pred.shape
    dev = _compute_device(pred)
    x = pred.reshape(n * t, c, h, w)  # (N*T, C, H, W)
    y = target.reshape(n * t, c, h, w)
    out = torch.empty(n * t, dtype=torch.float64, device=dev)
    for i in range(0, n * t, _CHUNK):
        xb = x[i : i + _CHUNK].to(device=dev, dtype=torch.float64)
        yb = y[i : i + _CHUNK].to(device=dev, dtype=torch.float64)
        out[i : i + _CHUNK] = _ssim_frames(xb, yb)
    return out.reshape(n, t).to(pred.device)


@torch.no_grad()
def frame_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample, per-future-frame metrics (docs/design.md §6).

    Args:
        pred:   (N, T, C, H, W) float; clamped to [0, 1] first (as the paper's evaluation does).
        target: (N, T, C, H, W) float in [0, 1].

    Returns:
        {"mse", "mae", "psnr", "ssim"}: (N, T) float64 tensors on pred's device.
          mse  = sum over the frame's C*H*W pixels of (pred - target)^2
          mae  = sum over the frame's pixels of |pred - target|
          psnr = 10 log10(1 / mean squared error) (data range 1; +inf for an exact frame)
          ssim = skimage's structural_similarity(data_range=1), see `ssim`

    Raises:
        ValueError: wrong ndim, mismatched shapes, non-float inputs, frames smaller than 7x7.
    """
    _check_pair(pred, target, min_size=SSIM_WIN)
    pred = pred.clamp(0.0, 1.0)
    c, h, w = pred.shape[-3:]
    diff = pred - target  # (N, T, C, H, W)
    mse = diff.square().sum(dim=(-3, -2, -1), dtype=torch.float64)  # (N, T)
    mae = diff.abs().sum(dim=(-3, -2, -1), dtype=torch.float64)  # (N, T)
    mse_mean = mse / (c * h * w)  # per-pixel mean, for PSNR
    psnr = 10.0 * torch.log10(DATA_RANGE**2 / mse_mean)  # 1/0 -> inf -> +inf dB
    return {"mse": mse, "mae": mae, "psnr": psnr, "ssim": ssim(pred, target)}


# ---------------------------------------------------------------------------------------------
# averaging

class MetricAccumulator:
    """Exact sample-weighted means over many batches, per metric and per future time step.

    Holds, per metric, the per-timestep sum over samples of the protocol's scored frames
    (float64, CPU) and the number of samples. The summary's mean equals the mean over the
    concatenation of all batches (not a mean of batch means). `merge` adds another
    accumulator's sums, e.g. from other evaluation workers.

        acc = MetricAccumulator("10-40")
        for short, target in loader:
            pred = model(short, out_len=40)
            acc.update(frame_metrics(pred, target))
        report = acc.summary()
    """

    def __init__(self, protocol: str | Protocol):
        self.protocol = get_protocol(protocol)
        self.sums: dict[str, torch.Tensor] = {}  # metric -> (len(frames),) float64
        self.count = 0  # samples seen
        self.unavailable: dict[str, str] = {}  # metric -> reason (e.g. LPIPS without weights)
        self.psnr_capped = 0  # scored frames whose PSNR was capped at PSNR_CAP_DB (exact frames)

    def update(self, per_frame: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: metric name -> (N, out_len) per-frame values (from `frame_metrics`)."""
        if not per_frame:
            raise ValueError("update() needs at least one metric")
        p = self.protocol
        n = None
        for name, v in per_frame.items():
            if not isinstance(v, torch.Tensor) or v.ndim != 2 or v.shape[1] != p.out_len:
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(
                    f"metric {name!r} has shape {shape}; protocol {p.name} needs "
                    f"(N, {p.out_len}) per-frame values"
                )
            if n is None:
                n = v.shape[0]
            elif v.shape[0] != n:
                raise ValueError(
                    f"metrics disagree on the batch size: {name!r} has {v.shape[0]} samples, "
                    f"others {n}"
                )
        if self.sums and set(per_frame) != set(self.sums):
            raise ValueError(
                f"metric names changed between batches: {sorted(per_frame)} vs {sorted(self.sums)}"
            )
        idx = list(p.frames)
        for name, v in per_frame.items():
            v = v.detach()[:, idx].to(device="cpu", dtype=torch.float64)
            if name == "psnr":
                self.psnr_capped += int((v > PSNR_CAP_DB).sum())
                v = v.clamp(max=PSNR_CAP_DB)
            s = v.sum(dim=0)  # (F,)
            self.sums[name] = self.sums[name] + s if name in self.sums else s
        self.count += n

    def mark_unavailable(self, name: str, reason: str) -> None:
        """Record that a metric (e.g. "lpips") could not be computed, and why."""
        self.unavailable[name] = reason

    def merge(self, other: "MetricAccumulator") -> None:
        """Add another accumulator's sums (same protocol and metrics)."""
        if other.protocol != self.protocol:
            raise ValueError(f"cannot merge protocol {other.protocol.name} into {self.protocol.name}")
        if self.sums and other.sums and set(other.sums) != set(self.sums):
            raise ValueError(f"metric names differ: {sorted(other.sums)} vs {sorted(self.sums)}")
        for name, s in other.sums.items():
            self.sums[name] = self.sums[name] + s if name in self.sums else s.clone()
        self.count += other.count
        self.psnr_capped += other.psnr_capped
        self.unavailable.update(other.unavailable)

    def summary(self) -> dict:
        """{"protocol", "num_samples", "timesteps", "mean": {m: float}, "per_timestep": {m: [float]}}.

        "mean" averages over samples and the protocol's scored frames; "per_timestep" is the
        mean over samples at each scored frame (1-based future steps in "timesteps").
        "unavailable" (metric -> reason) is present when a metric was marked unavailable.
        """
        if self.count == 0:
            raise ValueError("no samples accumulated yet")
        curves = {k: (s / self.count) for k, s in self.sums.items()}  # (F,) each
        out = {
            "protocol": self.protocol.name,
            "num_samples": self.count,
            "timesteps": self.protocol.timesteps,
            "mean": {k: float(c.mean()) for k, c in curves.items()},
            "per_timestep": {k: c.tolist() for k, c in curves.items()},
        }
        if self.unavailable:
            out["unavailable"] = dict(self.unavailable)
        if self.psnr_capped:
            out["psnr_capped_frames"] = self.psnr_capped
        return out


def summarize(per_frame: Mapping[str, torch.Tensor], protocol: str | Protocol) -> dict:
    """Mean over the protocol's scored frames and per-timestep curves of (N, out_len) metrics.

    Same output as `MetricAccumulator.summary()` after one `update`.
    """
    acc = MetricAccumulator(protocol)
    acc.update(per_frame)
    return acc.summary()


# ---------------------------------------------------------------------------------------------
# LPIPS

# torchvision's AlexNet ImageNet weights, as `AlexNet_Weights.IMAGENET1K_V1.url` names them:
# https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (the 8 hex digits are the
# sha256 prefix).
ALEXNET_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"
_ALEXNET_SHA256_PREFIX = "7be5be79"


class LPIPSUnavailableError(RuntimeError):
    """LPIPS cannot be computed here; the message says why and how to fix it."""


def lpips_weights_path() -> str:
    """Where torchvision looks for the AlexNet weights: `torch.hub.get_dir()/checkpoints/<file>`.

    `torch.hub.get_dir()` is `$TORCH_HOME/hub` (default `~/.cache/torch/hub`) unless
    `torch.hub.set_dir` was called.
    """
    try:  # the file name as torchvision publishes it, if this torchvision still does
        from torchvision.models import AlexNet_Weights

        name = os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url)
    except Exception:  # pragma: no cover - torchvision missing or renamed
        name = ALEXNET_WEIGHTS_FILE
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def _missing_message(path: str) -> str:
    return (
        f"LPIPS unavailable: AlexNet weights file {os.path.basename(path)} not found in "
        f"{os.path.dirname(path)} (no download is attempted). " + _how_to_provide(path)
    )


def _how_to_provide(path: str) -> str:
    folder = os.path.dirname(path)
    return (
        f"Copy {os.path.basename(path)} (from https://download.pytorch.org/models/"
        f"{os.path.basename(path)}, on a machine with internet access) into {folder}/ "
        f"(i.e. $TORCH_HOME/hub/checkpoints/; TORCH_HOME defaults to ~/.cache/torch)."
    )


@dataclass
class LPIPSUnavailable:
    """LPIPS could not be set up. Falsy; calling it raises `LPIPSUnavailableError(reason)`."""

    reason: str
    available: bool = field(default=False, init=False)

    def __bool__(self) -> bool:
        return False

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise LPIPSUnavailableError(self.reason)


def _sha256_prefix(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[: len(_ALEXNET_SHA256_PREFIX)]


def _build_lpips(path: str, check_hash: bool):
    """lpips.LPIPS(net="alex") with its AlexNet trunk loaded from `path`.

    The trunk is built with `pnet_rand=True` (so torchvision never tries to download) and then
    *every* trunk parameter is overwritten from the file, loaded with `weights_only=True` (no code
    from the file runs, unlike torch.hub's own loader). The result is the same network as
    `lpips.LPIPS(net="alex")` with the file in torchvision's cache.
    """
    if check_hash:
        got = _sha256_prefix(path)
        if got != _ALEXNET_SHA256_PREFIX:
            raise ValueError(
                f"sha256 of {path} starts with {got}, expected {_ALEXNET_SHA256_PREFIX}: "
                "not torchvision's ImageNet AlexNet weights"
            )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")

    import lpips  # the package; imported late so `lmc.metrics` imports without it

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation warnings
        model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)

    # lpips names the trunk 'sliceK.<i>.weight' for torchvision's 'features.<i>.weight'
    trunk = {}
    missing, mismatched = [], []
    for name, p in model.net.named_parameters():
        key = "features." + name.split(".", 1)[1]
        if key not in state:
            missing.append(key)
        elif tuple(state[key].shape) != tuple(p.shape):
            mismatched.append(f"{key}: file {tuple(state[key].shape)} vs AlexNet {tuple(p.shape)}")
        else:
            trunk[name] = state[key]
    if missing or mismatched:
        raise ValueError(
            f"{path} is not an AlexNet state dict: missing {missing}, mismatched {mismatched}"
        )
    model.net.load_state_dict(trunk, strict=True)
    return model.eval().requires_grad_(False)


class LPIPSMetric:
    """Per-frame LPIPS (AlexNet, lpips v0.1), (N, T, C, H, W) in [0, 1] -> (N, T).

    Construct through `load_lpips` (which returns `LPIPSUnavailable` instead of raising), or
    directly (raises `LPIPSUnavailableError` with the reason and how to provide the weights).
    The AlexNet trunk weights must be in torchvision's cache (`lpips_weights_path()`); nothing is
    downloaded. The linear calibration layers ship inside the `lpips` package.
    """

    available = True

    def __init__(self, device: str | torch.device | None = None, *, check_hash: bool = False,
                 chunk: int = _CHUNK):
        path = lpips_weights_path()
        if not os.path.isfile(path):
            raise LPIPSUnavailableError(_missing_message(path))
        try:
            model = _build_lpips(path, check_hash)
        except Exception as e:  # corrupt / wrong file, lpips package broken, ...
            raise LPIPSUnavailableError(
                f"LPIPS unavailable: could not load AlexNet weights from {path}: "
                f"{type(e).__name__}: {e}. " + _how_to_provide(path)
            ) from e
        self.weights_path = path
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.to(self.device)
        self.chunk = chunk

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS per sample and frame -> (N, T) float64 on pred's device (lower is better).

        pred is clamped to [0, 1]; both are mapped to [-1, 1]; 1-channel frames are repeated to
        3 channels (RGB passes through). Frames are run through AlexNet in chunks of `chunk`.
        """
        _check_pair(pred, target)
        n, t, c, h, w = pred.shape
        if c not in (1, 3):
            raise ValueError(f"LPIPS needs 1 or 3 channels, got C={c} (shape {tuple(pred.shape)})")
        x = pred.clamp(0.0, 1.0).reshape(n * t, c, h, w)  # (N*T, C, H, W)
        y = target.reshape(n * t, c, h, w)
        out = torch.empty(n * t, dtype=torch.float64, device=pred.device)
        for i in range(0, n * t, self.chunk):
            xb = x[i : i + self.chunk].to(self.device, torch.float32) * 2 - 1  # [0,1] -> [-1,1]
            yb = y[i : i + self.chunk].to(self.device, torch.float32) * 2 - 1
            if c == 1:
                xb, yb = xb.expand(-1, 3, -1, -1), yb.expand(-1, 3, -1, -1)  # (B, 3, H, W)
            d = self.model(xb, yb)  # (B, 1, 1, 1)
            out[i : i + self.chunk] = d.reshape(-1).to(out)
        return out.reshape(n, t)


def load_lpips(device: str | torch.device | None = None, *,
               check_hash: bool = False) -> LPIPSMetric | LPIPSUnavailable:
    """An `LPIPSMetric`, or an `LPIPSUnavailable` carrying the reason (never raises for that).

    check_hash: also verify the file's sha256 prefix (7be5be79) so that only torchvision's
    ImageNet weights are accepted (reads the 233 MB file once more).

        lp = load_lpips("cuda")
        if lp: per_frame["lpips"] = lp(pred, target)
        else: acc.mark_unavailable("lpips", lp.reason)
    """
    try:
        return LPIPSMetric(device, check_hash=check_hash)
    except LPIPSUnavailableError as e:
        return LPIPSUnavailable(str(e))


_STATUS_CACHE: dict[tuple, tuple[bool, str]] = {}


def lpips_status() -> tuple[bool, str]:
    """(available, reason): whether LPIPS can be computed here, and why not / from which file.

    Missing file: answered from the file system alone. Present file: the weights are actually
    loaded once (on CPU) to catch corrupt files; the answer is cached per file (path, size, mtime).
    """
    path = lpips_weights_path()
    if not os.path.isfile(path):
        return False, _missing_message(path)
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _STATUS_CACHE:
        lp = load_lpips("cpu")
        _STATUS_CACHE[key] = (True, f"LPIPS available: AlexNet weights from {path}") if lp \
            else (False, lp.reason)
    return _STATUS_CACHE[key]

