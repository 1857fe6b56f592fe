"""The training job as users run it: `ray job submit` against a real local head, its command
line (one flag per config field), the prepare jobs' defaults, and the cluster launcher config.

The head is a separate Ray instance (own temp dir and ports; `local_cluster.LocalCluster`) next
to the session's `ray_session` cluster, ended through its process group, never by `ray stop`.
"""
import json
import os
import re
import secrets
import subprocess
import sys
import time

import pytest
import yaml

from local_cluster import LocalCluster
from test_train import CFG, IMG, OUT, SHORT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _auth_env(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    if mode == "token":  # a token of the test's own; the user's ~/.ray/auth_token is untouched
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return env


@pytest.fixture(params=["token", "disabled"])
def head(request):
    cluster = LocalCluster(_auth_env(request.param), auth_mode=request.param)
    try:
        # the state API behind node registration needs the token this process lacks: wait
        # for the job server only
        cluster.start_head(cpus=2, wait_for_node=False)
        yield {"url": cluster.url, "env": cluster.env, "mode": request.param}
    finally:
        cluster.shutdown()


@pytest.mark.slow  # a head start and a 1-worker job: ~60 s per auth mode on 2 cores
def test_ray_job_submit_trains_and_checkpoints(head, kth_train_shards, tmp_path):
    storage = tmp_path / "runs"
    cmd = ["ray", "job", "submit", "--address", head["url"], "--working-dir", ".",
           "--runtime-env-json", json.dumps({"excludes": [".git", "runs", "data", ".cache"]}),
           "--", "python", "jobs/train_kth.py", *_train_argv(kth_train_shards, storage)]
    deadline = time.time() + 90
    while True:  # the head's job agent comes up a little after its HTTP server
        out = subprocess.run(cmd, cwd=ROOT, env=head["env"], capture_output=True, text=True,
                             timeout=400)
        log = out.stdout + out.stderr
        if "No available agent" not in log or time.time() > deadline:
            break
        time.sleep(3)
    assert out.returncode == 0, log[-3000:]
    assert re.search(r"Job '.*' succeeded", log), log[-3000:]
    run = storage / "job"
    assert (run / "checkpoint_000000004" / "model.pt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iterations"] == 4 and metrics["protocol"] == f"{SHORT}-{OUT}"


def test_cluster_yaml_names_the_sections_and_real_files():
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        cluster = yaml.safe_load(f)
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type",
                "file_mounts", "setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        assert key in cluster, key
    assert cluster["provider"]["type"] == "aws"
    nodes = cluster["available_node_types"]
    head = nodes[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_workers = [n for k, n in nodes.items() if k != cluster["head_node_type"]
                   and n["resources"].get("GPU", 0) >= 1]
    assert gpu_workers and all(n["max_workers"] > n.get("min_workers", 0) for n in gpu_workers)
    assert any(n["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
               for n in gpu_workers)
    # the commands install the synced project and name files that exist in it
    text = "\n".join(cluster["setup_commands"])
    assert "pip install" in text and "-e" in text
    mounted = [os.path.normpath(local) for local in cluster["file_mounts"].values()]
    assert "." in mounted or ROOT in [os.path.abspath(m) for m in mounted]
    referenced = set(re.findall(r"\b((?:jobs|lmc|pipeline)/[\w/]+\.py|pyproject\.toml)", 
                                open(os.path.join(ROOT, "cluster.yaml")).read()))
    assert referenced, "cluster.yaml should show the job commands it is for"
    for path in referenced:
        assert os.path.isfile(os.path.join(ROOT, path)), path
    assert "s3://" in open(os.path.join(ROOT, "cluster.yaml")).read()


def _train_argv(data, storage) -> list[str]:
    """jobs/train_kth.py's command line for test_train's CFG: the tiny preset, then one flag
    per config field that differs from it."""
    return ["--data", str(data), "--storage", str(storage), "--name", "job", "--preset", "tiny",
            "--iterations", str(CFG.iterations), "--checkpoint-every", "2", "--num-workers", "1",
            "--batch-size", str(CFG.batch_size), "--img-size", str(IMG), "--short-len",
            str(SHORT), "--out-len", str(OUT), "--long-len", str(CFG.long_len), "--width",
            str(CFG.width), "--memory-slots", str(CFG.memory_slots), "--eval-windows", "4",
            "--test-windows", "4"]


def test_train_job_flags_make_the_config(load_job, tmp_path):
    """The submitted command line above gives exactly test_train's CFG."""
    from lmc.train.cli import build_parser, model_config

    load_job("train_kth")                                 # the job module imports cleanly
    args = build_parser("kth").parse_args(_train_argv("shards", tmp_path))
    assert model_config(args, "kth") == CFG
    assert (args.checkpoint_every, args.num_workers, args.eval_windows) == (2, 1, 4)


def test_train_job_flags_make_exactly_the_run_settings_of_the_hand_written_flags(
        load_job, monkeypatch, tmp_path):
    """The run-settings flags are generated from RunSettings' fields; a typical command line
    (the submitted one above, plus the flags users give) makes exactly the RunSettings that
    the hand-written flags made, ``--gpus`` and ``--keep-checkpoints`` included."""
    import lmc.train.driver
    from lmc.train import RunSettings

    got = []
    monkeypatch.setattr(lmc.train.driver, "train",
                        lambda cfg, settings, **kw: got.append((cfg, settings, kw)) or {})
    job = load_job("train_kth")
    job.main(_train_argv("shards", tmp_path))
    job.main(_train_argv("shards", tmp_path) + [
        "--gpus", "--keep-checkpoints", "5", "--cpus-per-worker", "0.5", "--placement-strategy",
        "STRICT_SPREAD", "--eval-every", "3", "--protocol", "9-3", "--max-failures", "-1",
        "--autocast", "bf16", "--compile", "--memory-format", "contiguous",
        "--allow-change", "lr", "--force-unlock"])
    job.main(["--data", "shards", "--preset", "tiny"])
    (cfg, plain, _), (_, full, kw), (_, defaults, _) = got
    assert cfg == CFG
    assert plain == RunSettings(data="shards", storage=str(tmp_path), name="job", num_workers=1,
                                checkpoint_every=2, eval_windows=4, test_windows=4)
    assert full == RunSettings(data="shards", storage=str(tmp_path), name="job", num_workers=1,
                               use_gpu=True, cpus_per_worker=0.5,
                               placement_strategy="STRICT_SPREAD", checkpoint_every=2,
                               eval_every=3, eval_windows=4, test_windows=4, protocol="9-3",
                               max_failures=-1, num_to_keep=5, autocast="bf16", compile=True,
                               memory_format="contiguous")
    assert (kw["allow_change"], kw["force_unlock"]) == (("lr",), True)
    # the defaults are RunSettings' own (storage "runs" and the name are the job's)
    assert defaults == RunSettings(data="shards", storage="runs", name="kth-tiny")


def test_every_run_setting_has_a_flag_named_after_it():
    """One flag per RunSettings field: ``--<field with dashes>`` (``--gpus`` and
    ``--keep-checkpoints``, the names users know, for the fields named as Ray names them), its
    type, choices and default from the field; a value given to it reaches the field."""
    import dataclasses

    from lmc.cli import settings_flag, settings_from_args
    from lmc.train import RunSettings
    from lmc.train.cli import build_parser

    # min_workers has no flag of its own: --num-workers MIN-MAX sets it (below)
    fields = [f for f in dataclasses.fields(RunSettings) if f.name != "min_workers"]
    assert {f.name: settings_flag(f) for f in fields
            if settings_flag(f) != "--" + f.name.replace("_", "-")} == {
        "use_gpu": "--gpus", "num_to_keep": "--keep-checkpoints"}
    parser = build_parser("kth")
    base = ["--data", "d", "--storage", "s", "--name", "n"]
    defaults = settings_from_args(parser.parse_args(base), RunSettings)
    assert defaults == RunSettings(data="d", storage="s", name="n")
    for f in fields:
        default = getattr(defaults, f.name)
        if f.type == "bool":
            argv = [settings_flag(f) if not default else "--no-" + settings_flag(f)[2:]]
            value = not default
        elif "choices" in f.metadata:
            value = next(c for c in f.metadata["choices"] if c != default)
            argv = [settings_flag(f), value]
        else:
            value = ({"str": "x", "str | None": "10-40", "float": 0.25}[f.type]
                     if "int" not in f.type else 3 if default is None else default + 1)
            argv = [settings_flag(f), str(value)]
        args = parser.parse_args(base + argv)          # (a later --data/--storage/--name wins)
        assert getattr(settings_from_args(args, RunSettings), f.name) == value, f.name
    elastic = settings_from_args(parser.parse_args(base + ["--num-workers", "2-5"]), RunSettings)
    assert (elastic.min_workers, elastic.num_workers, elastic.workers) == (2, 5, "2-5")
    assert defaults.min_workers is None and not defaults.elastic


@pytest.mark.parametrize("value, why", [
    ("2-x", "allowed: a number of workers (4) or an elastic range MIN-MAX (2-8)"),
    ("5-2", "an elastic range MIN-MAX needs 1 <= MIN <= MAX"),
    ("0-2", "an elastic range MIN-MAX needs 1 <= MIN <= MAX")])
def test_a_bad_worker_range_is_one_line_naming_the_flag(value, why, capsys):
    from lmc.train.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser("kth").parse_args(["--num-workers", value])
    assert f"argument --num-workers: --num-workers '{value}': {why}" in capsys.readouterr().err


def test_one_error_format_for_config_run_and_sweep_settings():
    """One validator (``lmc.config.validator``) behind the config, the run settings and the
    sweep's: ``<kind> '<field>' = <value!r> is invalid; allowed: <allowed>``."""
    import lmc
    from lmc.experiments.sweep import SweepSettings, sweep_run
    from lmc.train import RunSettings

    def error(make) -> str:
        with pytest.raises(lmc.ConfigError) as e:
            make()
        return str(e.value)

    assert error(lambda: lmc.preset("tiny", channels=2)) == (
        "config field 'channels' = 2 is invalid; allowed: 1 (grayscale) or 3 (RGB)")
    assert error(lambda: RunSettings(data="d", storage="s", name="n", num_to_keep=0)) == (
        "run setting 'num_to_keep' = 0 is invalid; allowed: >= 1")
    assert error(lambda: RunSettings(data="d", storage="s", name="n", autocast="fp16")) == (
        "run setting 'autocast' = 'fp16' is invalid; allowed: none | bf16")
    assert error(lambda: SweepSettings(sweep_run(data="d", storage="s"), num_samples=0)) == (
        "sweep setting 'num_samples' = 0 is invalid; allowed: an integer >= 1")


@pytest.mark.parametrize("dataset, argv", [("kth", ["--input", "kth", "--output", "out"]),
                                           ("mmnist", ["--output", "out"])])
def test_prepare_job_defaults_fit_the_train_job_preset(dataset, argv, load_job):
    """`prepare_<dataset>.py` with no length flags makes shards that `train_<dataset>.py --data`
    (the paper preset) accepts, with test windows for each of the paper's protocols."""
    import lmc
    from lmc.protocols import PROTOCOLS
    from lmc.train.cli import DATASETS
    from pipeline.cli import config_from_args

    shard = config_from_args(load_job(f"prepare_{dataset}").build_parser().parse_args(argv))
    cfg = lmc.preset(DATASETS[dataset])
    assert (shard.short_len, shard.img_size, shard.channels) == (cfg.short_len, cfg.img_size,
                                                                 cfg.channels)
    assert shard.out_len >= cfg.out_len                  # train windows hold short + out frames
    test_window = shard.short_len + (shard.test_out_len or shard.out_len)
    paper = [p for p in PROTOCOLS.values() if dataset in p.datasets]
    assert paper and all(p.short_len + p.out_len <= test_window for p in paper)


def test_prepared_mmnist_passes_the_training_checks(ray_session, tmp_path):
    """The real job, run as a user runs it, then the driver's pre-flight checks on its output."""
    import lmc
    from lmc.train import RunSettings, validate

    out = tmp_path / "mmnist"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "prepare_mmnist.py"),
                           "--output", str(out), "--train-sequences", "3",
                           "--test-sequences", "2"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = validate(lmc.preset("paper-mmnist"),
                    RunSettings(data=str(out), storage=str(tmp_path / "runs"), name="r"))
    assert plan.facts.rows == {"train": 3, "test": 2}
    assert plan.protocol.name == "10-30"
