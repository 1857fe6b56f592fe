"""The jobs' error policy on bad flags: one `error:` line and exit status 1, never a
traceback, and before any work. `_job.run(main, argv)` is what `python jobs/x.py` runs; its
SystemExit carries the line (a string exit code: printed to stderr, status 1)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import lmc
from lmc.checkpoint import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_ERROR = ("device 'bogus' is not allowed; allowed: auto (cuda when there is one, else "
                "cpu), cpu, cuda or cuda:N (N a GPU index)")
HOLDS = {"predict": "pred/frame_NNN.png, strip.png, strip.gif",
         "evaluate": "summary.json, curves_<protocol>.csv and .png",
         "analyze_memory": "similarity.csv and .png, class_similarity.csv, slot_usage.csv and "
                           ".png, summary.json"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = lmc.preset("tiny", img_size=32, short_len=10, long_len=12, out_len=2, width=0.0625,
                     memory_slots=4, convlstm_layers=1)
    path = tmp_path_factory.mktemp("ckpt") / "ck"
    save_checkpoint(path, lmc.LMCModel(cfg), cfg)
    return str(path)


def argv(job: str, checkpoint: str, output: str, *extra: str) -> list[str]:
    data = ["--input", "nothing.avi"] if job == "predict" else ["--data", "no-shards"]
    return ["--checkpoint", checkpoint, *data, "--output", output, *extra]


def run_job(load_job, job: str, args: list[str]) -> str:
    """The one line `python jobs/<job>.py args` ends with (SystemExit's message)."""
    module = load_job(job)             # puts jobs/ on sys.path, for `import _job`
    import _job

    with pytest.raises(SystemExit) as exit_:
        _job.run(module.main, args)
    assert isinstance(exit_.value.code, str), exit_.value.code       # a string: exit status 1
    return exit_.value.code


@pytest.mark.parametrize("job", sorted(HOLDS))
def test_a_device_torch_does_not_know_is_one_line(job, checkpoint, tmp_path, load_job):
    """Checked before the input and the shards are read, not left to torch (whose
    RuntimeError "Expected one of cpu, cuda, ipu, xpu, ..." comes with a traceback)."""
    line = run_job(load_job, job, argv(job, checkpoint, str(tmp_path / "out"),
                                       "--device", "bogus"))
    assert line == f"error: {DEVICE_ERROR}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("job", sorted(HOLDS))
def test_an_output_that_is_a_file_is_one_line_before_any_work(job, checkpoint, tmp_path,
                                                              load_job):
    """Checked first, not met as "[Errno 17] File exists" or "[Errno 20] Not a directory"
    when the results are written (for evaluate, after the whole evaluation)."""
    taken = tmp_path / "taken"
    taken.write_text("mine")
    line = run_job(load_job, job, argv(job, checkpoint, str(taken), "--device", "cpu"))
    assert line == (f"error: output '{taken}' is an existing file; the output is a folder (for "
                    f"{HOLDS[job]}): name a new or an existing folder")
    line = run_job(load_job, job, argv(job, checkpoint, str(taken / "sub"), "--device", "cpu"))
    assert line == (f"error: output '{taken}/sub' is under '{taken}', a file; the output is a "
                    f"folder (for {HOLDS[job]}): name a new or an existing folder")
    assert taken.read_text() == "mine"


def test_devices_allowed_are_the_ones_this_machine_has(monkeypatch):
    from lmc.tools.checks import check_device

    for ok in (None, "auto", "cpu", torch.device("cpu")):
        check_device(ok)
    for bad in ("CPU", "cuda:x", "cuda:-1", " cpu", "mps", "meta", "cpu:0"):
        with pytest.raises(ValueError, match=r"is not allowed; allowed: auto \(cuda when"):
            check_device(bad)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError) as e:
        check_device("cuda")
    assert str(e.value) == "device 'cuda': this machine has no CUDA device; allowed here: auto or cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda:1")
    check_device(torch.device("cuda", 0))
    with pytest.raises(ValueError) as e:
        check_device("cuda:2")
    assert str(e.value) == ("device 'cuda:2': this machine has 2 CUDA device(s); allowed here: "
                            "auto, cpu, cuda or cuda:0 to cuda:1")


# -- --config (lmc.cli, every training, sweep and ablation job) ------------------------------------

FIX = """give a .json file of config fields or a JSON object such as '{"lr": 0.001, "memory_slots": 50}'"""


def test_config_5_is_one_line_from_the_training_job(tmp_path):
    """A JSON value that is not an object is named, not met as TypeError "'int' object is not
    iterable" with a traceback."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "train_mmnist.py"),
                           "--config", "5", "--storage", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr == f"error: --config '5': no such file, and a JSON number, not an object; {FIX}\n"
    assert not (tmp_path / "runs").exists()


def test_config_values_that_are_not_an_object_of_fields(tmp_path, monkeypatch):
    import argparse

    from lmc.cli import add_config_flags, config_from_args
    from lmc.config import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "broken.json").write_text('{"lr": }')
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe")
    (tmp_path / "good.json").write_text(json.dumps({"lr": 0.5}))
    p = argparse.ArgumentParser()
    add_config_flags(p, default_preset="tiny")

    def error(value):
        with pytest.raises(ConfigError) as e:
            config_from_args(p.parse_args(["--config", value]))
        return str(e.value)

    assert error("nothere.json") == f"--config 'nothere.json': no such file, and not a JSON object; {FIX}"
    assert error("[1, 2]") == f"--config '[1, 2]': no such file, and a JSON list, not an object; {FIX}"
    assert error("null") == f"--config 'null': no such file, and a JSON null, not an object; {FIX}"
    assert error(str(tmp_path)) == f"--config '{tmp_path}' is a folder; {FIX}"
    assert error("list.json") == f"--config 'list.json': the file holds a JSON list, not an object; {FIX}"
    assert error("broken.json") == ("--config 'broken.json': the file is not valid JSON "
                                    "(Expecting value at line 1 column 8)")
    assert error('{"lr": ') == "--config '{\"lr\": ': not valid JSON (Expecting value at line 1 column 8)"
    assert error("binary.json").startswith("--config 'binary.json': the file cannot be read as "
                                           "JSON text ('utf-8' codec can't decode byte 0xff")
    assert config_from_args(p.parse_args(["--config", "good.json"])).lr == 0.5
    assert config_from_args(p.parse_args(["--config", '{"lr": 0.25}'])).lr == 0.25


@pytest.mark.parametrize("flags, expect", [
    (["--name", ""], "error: --name '': a run name must be a non-empty folder name (leave the "
                     "flag out for the default)"),
    (["--cpus-per-worker", "inf"], "error: run setting 'cpus_per_worker' = inf is invalid; "
                                   "allowed: a finite number > 0"),
    (["--keep-checkpoints", "0"], "error: run setting 'num_to_keep' = 0 is invalid; "
                                  "allowed: >= 1"),
    (["--channels", "2"], "error: config field 'channels' = 2 is invalid; allowed: 1 "
                          "(grayscale) or 3 (RGB)"),
])
def test_training_flags_that_cannot_name_a_run_are_one_line(tmp_path, load_job, flags, expect):
    """Checked before the run: `--name ''` would otherwise fall back to the default name, and
    `inf` CPUs end in an OverflowError inside Ray, retried --max-failures times."""
    module = load_job("train_mmnist")
    import _job
    with pytest.raises(SystemExit) as e:
        _job.run(module.main, ["--storage", str(tmp_path / "runs"), *flags])
    assert e.value.code == expect
    assert not (tmp_path / "runs").exists()
