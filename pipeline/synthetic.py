"""KTH-like synthetic videos: real encoded .avi files for demos, tests and benchmarks.

Each file follows KTH's naming (`personNN_ACTION_dD_uncomp.avi`, 160x120, 25 fps) and shows a
figure of KTH's relative size (about two thirds of the frame height, a torso ~10 px wide, like
KTH's actors at d1) over a homogeneous scene (KTH's backgrounds are plain fields and walls),
whose motion is long-term and periodic, and differs per action the way KTH's does:
walking, jogging and running cross the scene at increasing speed with shorter, wider strides;
boxing, hand waving and hand clapping stand still with different arm cycles. Scenarios change
the scene like KTH's: d1 outdoors, d2 scale variation, d3 different clothes, d4 indoors. Persons
differ in size, tempo, phase and starting point, all drawn from a seeded RNG.

Encoding uses the ffmpeg binary that the `imageio-ffmpeg` wheel ships (no system ffmpeg).
"""
from __future__ import annotations

import math
import os
import subprocess

import numpy as np

from pipeline.sources.kth import ACTIONS, TEST_PERSONS, TRAIN_PERSONS, kth_name

WIDTH, HEIGHT, FPS = 160, 120, 25

# action -> (speed px/frame, limb period in frames, leg swing deg, arm style); KTH's actors
# cross the 160 px frame in about 4.5 s walking, 2.5 s jogging, 1.8 s running (25 fps).
_MOTION = {
    "walking": (1.4, 25, 25.0, "swing"),
    "jogging": (2.4, 16, 38.0, "bent"),
    "running": (3.6, 12, 52.0, "bent"),
    "boxing": (0.0, 12, 0.0, "punch"),
    "handwaving": (0.0, 20, 0.0, "wave"),
    "handclapping": (0.0, 10, 0.0, "clap"),
}
_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
BODY = 1.45      # limb and torso lengths relative to the first version's stick figure
MARGIN = 25      # px from the frame border where a walking figure turns around


def _segment(canvas: np.ndarray, color, p, q, width: float) -> None:
    """Paint an anti-aliased thick segment p->q ((x, y) floats) onto an (H, W, 3) float canvas."""
    (px, py), (qx, qy) = p, q
    dx, dy = qx - px, qy - py
    t = np.clip(((_XX - px) * dx + (_YY - py) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    dist = np.hypot(_XX - (px + t * dx), _YY - (py + t * dy))
    cover = np.clip(width / 2 + 0.5 - dist, 0, 1)[..., None]  # (H, W, 1)
    canvas *= 1 - cover
    canvas += cover * np.asarray(color, np.float32)


def _limb(origin, angle_deg: float, length: float):
    """End point of a limb hanging from `origin`, angle 0 = straight down, positive = forward."""
    a = math.radians(angle_deg)
    return origin[0] + length * math.sin(a), origin[1] + length * math.cos(a)


def _background(rng: np.random.Generator, scenario: int) -> np.ndarray:
    """A static homogeneous scene with smooth shading, like KTH's fields and walls: bright
    outdoors (d1-d3), darker striped indoors (d4)."""
    base = np.array([150, 170, 120] if scenario != 4 else [105, 95, 90], np.float32)
    coarse = rng.normal(0, 1, (HEIGHT // 30 + 2, WIDTH // 30 + 2)).astype(np.float32)
    ys = np.linspace(0, coarse.shape[0] - 1.001, HEIGHT)    # bilinear upsampling of the
    xs = np.linspace(0, coarse.shape[1] - 1.001, WIDTH)     # coarse field: smooth shading
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    c = coarse
    texture = ((1 - fy) * ((1 - fx) * c[y0][:, x0] + fx * c[y0][:, x0 + 1])
               + fy * ((1 - fx) * c[y0 + 1][:, x0] + fx * c[y0 + 1][:, x0 + 1]))[..., None] * 8
    bg = np.broadcast_to(base, (HEIGHT, WIDTH, 3)) + texture
    if scenario == 4:
        bg = bg + 12 * (np.sin(_XX / 6.0)[..., None] > 0.6)
    bg[int(HEIGHT * 0.85):] *= 0.8  # ground
    return bg


def render_frames(action: str, person: int, scenario: int, num_frames: int,
                  seed: int = 0) -> np.ndarray:
    """The frames of one synthetic video -> (num_frames, 120, 160, 3) uint8 RGB."""
    if action not in _MOTION:
        raise ValueError(f"action={action!r}: allowed {ACTIONS}")
    rng = np.random.default_rng([seed, person, scenario, ACTIONS.index(action)])
    speed, period, swing, arms = _MOTION[action]
    size = rng.uniform(0.85, 1.1) * BODY
    tempo = rng.uniform(0.9, 1.1)
    phase0 = rng.uniform(0, 2 * math.pi)
    x = rng.uniform(MARGIN, WIDTH - MARGIN)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    shirt = (200, 50, 50) if scenario != 3 else (40, 60, 190)
    trousers = (40, 40, 60) if scenario != 3 else (220, 200, 60)
    thick = 7.0 if scenario != 3 else 9.0
    bg = _background(rng, scenario)
    frames = np.empty((num_frames, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(num_frames):
        s = size * (1 + 0.25 * math.sin(2 * math.pi * t / 150)) if scenario == 2 else size
        ph = phase0 + 2 * math.pi * tempo * t / period
        x += direction * speed * tempo
        if not MARGIN < x < WIDTH - MARGIN:  # turn around at the borders, like KTH's actors
            direction = -direction
            x = min(max(x, MARGIN), WIDTH - MARGIN)
        bounce = abs(math.sin(ph)) * 1.5 * speed * s
        hip = (x, HEIGHT * 0.56 - bounce)
        neck = (x, hip[1] - 24 * s)
        canvas = bg.copy()
        for leg in (0, math.pi):
            a = direction * swing * math.sin(ph + leg)
            knee = _limb(hip, a, 13 * s)
            bend = max(0.0, direction * swing * 0.8 * math.sin(ph + leg + 1.2))
            _segment(canvas, trousers, hip, knee, thick)
            _segment(canvas, trousers, knee, _limb(knee, a - bend, 13 * s), thick)
        _segment(canvas, shirt, hip, neck, thick + 3)
        for side, arm_phase in ((1.0, 0.0), (-1.0, math.pi)):
            if arms == "swing":
                up = -direction * 0.8 * swing * math.sin(ph + arm_phase)
                low = up
            elif arms == "bent":
                up = -direction * 0.8 * swing * math.sin(ph + arm_phase)
                low = up + 70
            elif arms == "punch":  # alternate jabs: forearm extends forward then retracts
                ext = max(0.0, math.sin(ph + arm_phase))
                up, low = direction * (40 + 45 * ext), direction * (130 - 40 * ext)
            elif arms == "wave":  # both arms overhead, swinging out and in together
                up = side * (150 + 25 * math.sin(ph))
                low = side * (170 + 40 * math.sin(ph))
            else:  # clap: hands meet in front once per period
                open_ = 0.5 + 0.5 * math.sin(ph)
                up = direction * (60 + 10 * side * open_)
                low = direction * (90 + 50 * side * open_)
            elbow = _limb(neck, up, 11 * s)
            _segment(canvas, shirt, neck, elbow, thick - 1)
            _segment(canvas, (230, 190, 160), elbow, _limb(elbow, low, 10 * s), thick - 1.5)
        head = (neck[0], neck[1] - 6 * s)
        _segment(canvas, (230, 190, 160), head, head, 9 * s)
        frames[t] = np.clip(canvas, 0, 255).astype(np.uint8)
    return frames


def encode_avi(frames: np.ndarray, path: str, fps: int = FPS, quality: int = 3) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames as an MPEG-4 Part 2 .avi with imageio-ffmpeg."""
    import imageio_ffmpeg

    t, h, w, _ = frames.shape
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
           "-c:v", "mpeg4", "-q:v", str(quality), "-pix_fmt", "yuv420p", path]
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(),
                          capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {path}: {proc.stderr.decode()[-500:]}")


def _person_order() -> list[int]:
    """Persons interleaving train and test (1, 17, 2, 18, ...), so small sets have both."""
    order: list[int] = []
    for a, b in zip(TRAIN_PERSONS, list(TEST_PERSONS) + [None] * 16):
        order += [a] + ([b] if b else [])
    return order


def write_kth_like(out_dir: str, *, per_action: int | None = None, persons=None,
                   actions=ACTIONS, scenarios=(1, 2, 3, 4), num_frames: int = 150,
                   seed: int = 0, sequences: bool = True) -> list[str]:
    """Write KTH-like .avi files into `out_dir` (and a KTH-format `00sequences.txt`).

    Either `per_action` videos per action (persons interleaved so both splits appear, then
    scenarios) or the full grid `persons x actions x scenarios`. The sequence file splits each
    video into 4 sub-sequences with small gaps, 1-based inclusive like KTH's. Returns the paths.
    """
    if per_action is not None:
        grid = [(p, d) for d in scenarios for p in (persons or _person_order())][:per_action]
    else:
        grid = [(p, d) for p in (persons or range(1, 26)) for d in scenarios]
    os.makedirs(out_dir, exist_ok=True)
    paths, lines = [], []
    for action in actions:
        for person, scenario in grid:
            name = kth_name(person, action, scenario)
            path = os.path.join(out_dir, name + "_uncomp.avi")
            encode_avi(render_frames(action, person, scenario, num_frames, seed), path)
            paths.append(path)
            bounds = np.linspace(0, num_frames, 5).astype(int)
            ranges = [f"{a + 1 + (i > 0)}-{b}" for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
            lines.append(f"{name}\t\tframes\t{', '.join(ranges)}")
    if sequences:
        with open(os.path.join(out_dir, "00sequences.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return paths
