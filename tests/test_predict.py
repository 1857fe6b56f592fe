"""Predict: a real encoded video in, the model's own prediction out as PNGs, a strip and a GIF."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import lmc
from lmc.checkpoint import save_checkpoint
from lmc.tools.predict import VideoTooShortError, predict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    cfg = lmc.preset("tiny", img_size=32, short_len=10, long_len=12, out_len=4, width=0.0625,
                     memory_slots=8, convlstm_layers=2)
    model = lmc.LMCModel(cfg).eval()
    with torch.no_grad():
        model.decoder[-2].bias.fill_(0.5)
    path = tmp_path_factory.mktemp("ckpt") / "ck"
    save_checkpoint(path, model, cfg)
    return path, model, cfg


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A real 24-frame MPEG-4 .avi (160x120 RGB) made with the pipeline's synthetic generator."""
    from pipeline.synthetic import encode_avi, render_frames

    path = tmp_path_factory.mktemp("video") / "person17_walking_d1_uncomp.avi"
    encode_avi(render_frames("walking", 17, 1, 24), str(path))
    return path


def decoded_directly(path, size):
    """decord at the model's size, then BT.601 luma: the pipeline's recipe, without lmc."""
    import decord
    from pipeline.decode import luma

    vr = decord.VideoReader(str(path), width=size, height=size, num_threads=1)
    return luma(vr.get_batch(list(range(len(vr)))).asnumpy())        # (T, S, S, 1)


def test_prediction_files_equal_calling_the_model(checkpoint, video, tmp_path):
    path, model, cfg = checkpoint
    res = predict(path, video, tmp_path, out_len=6, start=2, device="cpu", log=None)
    frames = decoded_directly(video, 32)
    assert res["frames_in_input"] == len(frames) == 24
    assert np.array_equal(res["input"], frames[2:12])
    assert np.array_equal(res["ground_truth"], frames[12:18])
    short = torch.from_numpy(frames[2:12].transpose(0, 3, 1, 2).copy()).float().div(255)[None]
    with torch.no_grad():
        want = model(short, out_len=6)[0].clamp(0, 1).mul(255).round().to(torch.uint8)
    written = sorted((tmp_path / "pred").glob("*.png"))
    assert [p.name for p in written] == [f"frame_{i:03d}.png" for i in range(1, 7)]
    got = np.stack([np.asarray(Image.open(p)) for p in written])         # (6, 32, 32) 'L'
    assert got.shape == (6, 32, 32)
    assert np.array_equal(got, want[:, 0].numpy())
    strip = Image.open(tmp_path / "strip.png")
    assert strip.height >= 3 * 64 and strip.width >= 10 * 64          # 3 rows, 10 input columns
    gif = Image.open(tmp_path / "strip.gif")
    assert gif.n_frames == 10 + 6


def test_frame_folder_and_missing_ground_truth(checkpoint, tmp_path):
    path, model, cfg = checkpoint
    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    rgb = rng.integers(0, 256, (10, 48, 48, 3), dtype=np.uint8)
    for i, f in enumerate(rgb):        # numbered out of lexical order: frame_2 before frame_10
        Image.fromarray(f).save(folder / f"frame_{i + 1}.png")
    res = predict(path, folder, tmp_path / "out", device="cpu", log=None)
    assert res["ground_truth"] is None and res["frames_in_input"] == 10
    from pipeline.decode import luma
    want = np.stack([luma(np.asarray(Image.fromarray(f).resize((32, 32), Image.BILINEAR)))
                     for f in rgb])
    assert np.array_equal(res["input"], want)
    assert len(list((tmp_path / "out" / "pred").glob("*.png"))) == cfg.out_len
    assert Image.open(tmp_path / "out" / "strip.gif").n_frames == 10 + cfg.out_len


def test_video_shorter_than_short_len_is_a_clear_error(checkpoint, tmp_path):
    from pipeline.synthetic import encode_avi, render_frames

    path, _, _ = checkpoint
    short = tmp_path / "short.avi"
    encode_avi(render_frames("boxing", 3, 2, 7), str(short))
    with pytest.raises(VideoTooShortError, match=r"short\.avi has 7 frames; .* needs 10 .*short_len 10"):
        predict(path, short, tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="nothing.avi"):
        predict(path, tmp_path / "nothing.avi", tmp_path / "out", log=None)


def test_command_line(checkpoint, video, tmp_path, capsys, load_job):
    path, _, _ = checkpoint
    job = load_job("predict")
    job.main(["--checkpoint", str(path), "--input", str(video), "--output", str(tmp_path),
              "--out-len", "3", "--device", "cpu"])
    assert "24 frames" in capsys.readouterr().out
    assert len(list((tmp_path / "pred").glob("*.png"))) == 3


OUT_LEN_ERROR = (
    "out_len 1000000 is out of range: allowed 1 to 1000 frames. Why a limit: the prediction is "
    "rolled out one model step per frame (about 0.2 s each for paper-kth on one CPU thread), "
    "held in memory as (out_len, C, H, W) floats, and written as one PNG, one strip column and "
    "one GIF frame per frame; 1000 is 25 times the paper's longest horizon (40)")


def test_out_len_is_bounded_before_any_work(checkpoint, video, tmp_path):
    """--out-len 1000000 would run for minutes in silence (a 10^6-step rollout, 65 GB of
    frames at 128x128): it is one error line at once, in the job as in the Python API."""
    path, _, _ = checkpoint
    out = tmp_path / "out"
    job = [sys.executable, "jobs/predict.py", "--checkpoint", str(path), "--input", str(video),
           "--output", str(out), "--device", "cpu"]
    proc = subprocess.run(job + ["--out-len", "1000000"], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert (proc.returncode, proc.stderr, proc.stdout) == (1, f"error: {OUT_LEN_ERROR}\n", "")
    with pytest.raises(ValueError, match=r"^out_len 1001 is out of range: allowed 1 to 1000 "):
        predict(path, video, out, out_len=1001, log=None)
    with pytest.raises(ValueError, match=r"^out_len 0 is out of range: allowed 1 to 1000 "):
        predict(path, video, out, out_len=0, log=None)
    assert not out.exists()
