"""Every command in README.md's ```bash blocks runs, or is listed here with the reason it cannot
run on this machine.

`RUN` and `SKIP` are keyed by the command's text as README shows it (continuation lines
joined, comments dropped, spaces collapsed), so a command added to README or changed there
fails `test_every_readme_command_is_run_or_skipped_with_a_reason` (fast lane) until it is
classified here. The slow test runs the `RUN` commands in README's order, in one temporary
working folder (they build on each other: shards, then training on them, then evaluating the
run's checkpoint), with a copy of the checkout's code, HOME pointed at a temporary folder (so
`~/.cache/lmc-memory`, the demo's cache, is a fresh one) and RAY_ADDRESS at the test session's
Ray cluster (no second Ray starts). Where a command trains or sweeps, flags appended give it a
small budget; where it reads data, the data are small stand-ins made first, named and shaped
as README (and results/*/README.md, which make that data) say.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks of a Markdown text, in order: a line ending in a
    backslash joined with the next, `#` comments and blank lines dropped, runs of blanks made
    one space."""
    commands, block, joined = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            block = "bash" if block is None and line.strip() == "```bash" else (
                None if block is not None else "other")
            continue
        if block != "bash":
            continue
        joined += line
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        command = " ".join(re.sub(r"(^|\s)#.*$", "", joined).split())
        joined = ""
        if command:
            commands.append(command)
    return commands


@dataclass(frozen=True)
class Run:
    """How the slow test runs a README command: ``edits`` (old, new) applied to its text,
    then ``budget`` flags appended; ``expect``: paths (in the working folder) it must leave."""

    edits: tuple = ()
    budget: str = ""
    expect: tuple = ()

    def command(self, text: str) -> str:
        for old, new in self.edits:
            assert old in text, (old, text)
            text = text.replace(old, new)
        return f"{text} {self.budget}".strip()


# a few iterations, a checkpoint every 2, a few windows scored
TRAIN_BUDGET = "--iterations 4 --checkpoint-every 2 --eval-windows 4 --test-windows 4"
DEMO_RUN = "runs/kth-demo/"

RUN = {
    # the package is installed here (pip needs a package index): the demo alone
    "pip install -e . && python jobs/train_kth.py": Run(
        edits=(("pip install -e . && ", ""),), budget=TRAIN_BUDGET,
        expect=tuple(DEMO_RUN + f for f in (
            "checkpoint_000000002/checkpoint.json", "checkpoint_000000004/checkpoint.json",
            "metrics.json", "learning_curves.csv", "learning_curves.png", "curves_10-10.csv",
            "curves_10-10.png", "prediction.png", "prediction.gif", "tensorboard"))),
    "python jobs/prepare_kth.py --input data/kth --output data/kth-shards": Run(
        expect=("data/kth-shards/manifest.json",)),
    "python jobs/prepare_mmnist.py --output data/mmnist-shards": Run(
        budget="--train-sequences 8 --test-sequences 4",
        expect=("data/mmnist-shards/manifest.json",)),
    "python jobs/prepare_videos.py --input clips/ --output data/my-shards --split train": Run(
        expect=("data/my-shards/manifest.json",)),
    # paper-kth: at 1/16 of its widths and batch 2, so that 2 iterations take seconds on a CPU
    "python jobs/train_kth.py --data data/kth-shards --storage runs --name kth --num-workers 2":
        Run(budget="--iterations 2 --checkpoint-every 2 --eval-windows 1 --test-windows 1 "
                   "--batch-size 2 --width 0.0625",
            expect=("runs/kth/checkpoint_000000002/checkpoint.json", "runs/kth/metrics.json")),
    # README names the checkpoint of the paper's 300,000 iterations; this run made 2
    "python jobs/evaluate.py --checkpoint runs/kth/checkpoint_000300000 --data data/kth-shards "
    "--output eval/kth": Run(
        edits=(("checkpoint_000300000", "checkpoint_000000002"),),
        budget="--max-samples 2 --timing-repeats 1", expect=("eval/kth/summary.json",)),
    "python jobs/evaluate.py --checkpoint results/kth-like/checkpoint --data data/kth-like-64 "
    "--protocol 10-20 --output eval/kth-like": Run(
        expect=("eval/kth-like/summary.json", "eval/kth-like/curves_10-20.csv")),
    "python jobs/predict.py --checkpoint results/kth-like/checkpoint --input "
    "data/kth-like-videos/person17_running_d1_uncomp.avi --start 20 --out-len 20 --output pred/":
        Run(expect=("pred/strip.png", "pred/strip.gif", "pred/pred/frame_020.png")),
    "python jobs/analyze_memory.py --checkpoint results/kth-like/checkpoint --data "
    "data/kth-like-64 --output fig7/": Run(
        expect=("fig7/summary.json", "fig7/similarity.png", "fig7/slot_usage.png")),
    # one seed of the three designs, 2 iterations each
    "python jobs/ablation.py --preset small-mmnist --data data/mmnist-1digit-32 --storage runs "
    "--name table4 --iterations 2000 --seeds 1 2 3": Run(
        budget="--iterations 2 --seeds 1 --checkpoint-every 2 --eval-windows 2 "
               "--timing-repeats 1 --batch-size 4",
        expect=tuple(f"runs/table4-{d}-s1/metrics.json" for d in ("none", "global", "local"))),
    # one trial (a grid of one) of 4 iterations: ASHA has nothing to stop. A stopped trial's
    # workers are freed through the Ray dashboard, which the test session runs without (README,
    # Known limits), and the next command needs their CPUs.
    "python jobs/tune_kth.py --preset tiny --img-size 32 --data "
    "~/.cache/lmc-memory/kth-demo-v3-10-10-32px-1ch --storage runs --name kth-sweep "
    "--memory-slots 16 32 --long-len 12 20 --lr 1e-4 3e-3 --lr-list --iterations 60 "
    "--eval-every 20": Run(
        budget="--memory-slots 16 --long-len 12 --lr 3e-3 --iterations 4 --eval-every 2 "
               "--eval-windows 4",
        expect=("runs/kth-sweep/best_config.json", "runs/kth-sweep/results.csv")),
    "python jobs/train_kth.py --data ~/.cache/lmc-memory/kth-demo-v3-10-10-32px-1ch --config "
    "runs/kth-sweep/best_config.json": Run(
        budget=TRAIN_BUDGET, expect=("runs/kth-paper-kth/metrics.json",)),
}

CLUSTER = "needs the AWS cluster of cluster.yaml (cloud credentials, network)"
SKIP = {
    'pip install -e ".[test]" && python -m pytest -q':
        "the fast lane itself (pytest runs this test; .ci/run runs every lane); pip needs a "
        "package index",
    "ray up cluster.yaml": CLUSTER,
    "ray dashboard cluster.yaml &": CLUSTER,
    "export RAY_ADDRESS=http://127.0.0.1:8265": CLUSTER + " (its job server, forwarded)",
    "ray job submit --working-dir . -- python jobs/prepare_kth.py --input s3://my-bucket/kth "
    "--output s3://my-bucket/kth-shards":
        CLUSTER + " and a private bucket; `ray job submit` of the jobs against a local head, "
        "with data on S3, runs in tests/test_train_jobs.py and tests/test_multinode.py",
    "ray job submit --working-dir . -- python jobs/train_kth.py --data "
    "s3://my-bucket/kth-shards --storage s3://my-bucket/runs --name kth-paper --num-workers 4 "
    "--gpus": CLUSTER + ", with GPUs",
    "ray job submit --working-dir . -- python jobs/train_kth.py --data "
    "s3://my-bucket/kth-shards --storage s3://my-bucket/runs --name kth-paper --num-workers 2-8 "
    "--gpus": CLUSTER + ", with spot GPU nodes; an elastic run through a preemption on a local "
              "multi-node cluster runs in tests/test_elastic.py",
    "ray job submit --working-dir . -- python jobs/tune_kth.py --data s3://my-bucket/kth-shards "
    "--storage s3://my-bucket/runs --name kth-sweep --gpus": CLUSTER + ", with GPUs",
    "ray down cluster.yaml": CLUSTER,
    "python jobs/evaluate.py --checkpoint kth_model.pt --preset paper-kth --data "
    "data/kth-shards":
        "the reference's published weights file, a download; reading that format is tested by "
        "tests/test_model_parity.py",
    "python jobs/ablation.py --preset paper-kth --data data/kth-shards --storage runs "
    "--iterations 50000 --gpus": "needs GPUs",
}


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    commands = readme_commands(open(README, encoding="utf-8").read())
    assert "python jobs/prepare_mmnist.py --output data/mmnist-shards" in commands
    unknown = [c for c in commands if c not in RUN and c not in SKIP]
    assert not unknown, ("README commands that tests/test_readme.py neither runs nor skips "
                         "(add each to RUN, or to SKIP with the reason): " + repr(unknown))
    stale = sorted((set(RUN) | set(SKIP)) - set(commands))
    assert not stale, f"entries for commands README no longer has: {stale!r}"
    assert not set(RUN) & set(SKIP)
    assert len(commands) == len(set(commands)), "a README command twice: run once, list once"


def test_readme_command_extraction():
    text = ("intro\n```bash\n# a comment\npython a.py --x 1 \\\n    --y 2   # why\n\n"
            "cmd &   # background\n```\n```\noutput, not a command\n```\n"
            "```python\nimport lmc\n```\n```bash\nlast\n```\n")
    assert readme_commands(text) == ["python a.py --x 1 --y 2", "cmd &", "last"]


def _checkout(work) -> None:
    """The code the commands run, copied (jobs/ and the packages; `connect` ships the packages
    it finds beside `pipeline/` to the Ray workers), and the committed results."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("jobs", "lmc", "pipeline"):
        shutil.copytree(os.path.join(ROOT, name), work / name, ignore=ignore)
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), work / "pyproject.toml")
    os.symlink(os.path.join(ROOT, "results"), work / "results")    # read only


def _small_data(work, home) -> None:
    """The inputs README's commands name, small: KTH-like videos (persons 1 and 17, the six
    actions, 120 frames in 4 sub-sequences), also in the demo's cache (the demo prepares its
    shards from there instead of rendering its own 96 videos, minutes on this machine); four
    of them whole (no 00sequences.txt) as data/kth, two as clips/; data/kth-like-64 and
    data/mmnist-1digit-32 prepared as results/kth-like and results/mmnist's READMEs say, with
    fewer inputs."""
    from lmc.train.cli import DEMO_DATA_VERSION
    from pipeline import KTHSource, MovingMNISTSource, ShardConfig, prepare, write_kth_like

    data = work / "data"
    videos = data / "kth-like-videos"
    write_kth_like(str(videos), per_action=2, num_frames=120)
    shutil.copytree(videos, home / ".cache" / "lmc-memory" /
                    f"kth-synthetic-videos-{DEMO_DATA_VERSION}")
    for folder, names in ((data / "kth", ("person01_walking_d1", "person17_walking_d1",
                                          "person01_boxing_d1", "person17_boxing_d1")),
                          (work / "clips", ("person01_running_d1", "person01_jogging_d1"))):
        folder.mkdir(parents=True)
        for name in names:
            shutil.copy(videos / f"{name}_uncomp.avi", folder)
    prepare(KTHSource(str(videos)), str(data / "kth-like-64"),
            ShardConfig(img_size=64, out_len=10, test_out_len=20, long_len=20, train_stride=5),
            verbose=False)
    prepare(MovingMNISTSource(train_sequences=16, test_sequences=4, num_digits=1,
                              canvas_size=64),
            str(data / "mmnist-1digit-32"), ShardConfig(img_size=32, out_len=10, long_len=20),
            verbose=False)


@pytest.mark.slow  # 12 commands, 5 of them Ray Train runs or sweeps: 5-7 min on 2 cores
def test_readme_commands_run(ray_session, tmp_path):
    import matplotlib

    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    t0 = time.monotonic()
    _checkout(work)
    _small_data(work, home)
    env = {**os.environ, "HOME": str(home), "LMC_TRACEBACK": "1",
           "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "MPLCONFIGDIR": matplotlib.get_configdir(),      # not a new font cache per run
           "TORCH_HOME": os.environ.get("TORCH_HOME") or
           os.path.join(os.path.expanduser("~"), ".cache", "torch")}
    env.pop("LMC_CACHE", None)
    token = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")   # where Ray keeps the
    if os.path.isfile(token):               # session's token when it uses token auth (by HOME)
        env.setdefault("RAY_AUTH_TOKEN_PATH", token)
    print(f"\n{time.monotonic() - t0:6.1f} s  small data made")
    for text in readme_commands(open(README, encoding="utf-8").read()):
        if text in SKIP:
            print(f"{'skipped':>8}  {text}: {SKIP[text]}")
            continue
        step = RUN[text]
        command = step.command(text)
        t = time.monotonic()
        proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
        print(f"{time.monotonic() - t:6.1f} s  {command}")
        assert proc.returncode == 0, (f"{command}\nexit status {proc.returncode}\n"
                                      f"{(proc.stdout + proc.stderr)[-6000:]}")
        missing = [p for p in step.expect if not (work / p).exists()]
        assert not missing, f"{command} left no {missing}\n{proc.stdout[-3000:]}"
    print(f"{time.monotonic() - t0:6.1f} s  in all")
