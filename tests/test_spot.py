"""The spot watcher (``pipeline.spot``) against a fake instance metadata service on 127.0.0.1
with AWS's HTTP contract (``fake_imds.FakeIMDS``): no notice, no drain; a notice, one drain with
its deadline; a service that does not answer, polled on and logged once. The drain of a real
Ray node through ``ray drain-node`` runs in the multi-node lane (``test_elastic.py``)."""

import pytest

from fake_imds import FakeIMDS
from local_cluster import free_port
from pipeline.spot import AwsSpotMetadata, MetadataUnavailable, Notice, parse_notice, watch


class Clock:
    """Polls counted, time advanced by the watcher's own sleeps; ``at[n]`` runs before poll n."""

    def __init__(self, at=None, limit=20):
        self.t, self.polls, self.at, self.limit = 1_000_000.0, 0, at or {}, limit

    def sleep(self, s):
        self.t += s

    def stop(self):
        self.polls += 1
        if self.polls in self.at:
            self.at[self.polls]()
        return self.polls > self.limit


@pytest.fixture
def imds():
    server = FakeIMDS()
    yield server
    server.close()


def test_no_notice_no_drain(imds):
    drains, logs, clock = [], [], Clock(limit=5)
    assert watch(AwsSpotMetadata(imds.url), lambda *a: drains.append(a), poll_s=5,
                 log=logs.append, sleep=clock.sleep, stop=clock.stop) is None
    assert drains == [] and logs == []
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert len(gets) == 5 and {r[2] for r in gets} == {404}
    assert [r[0] for r in imds.requests].count("PUT") == 1     # one token serves every poll


def test_a_notice_drains_once_with_its_deadline(imds):
    import time
    drains, logs = [], []
    deadline = imds.give_notice(seconds=90)
    notice = watch(AwsSpotMetadata(imds.url), lambda left, msg: drains.append((left, msg)),
                   poll_s=0.01, log=logs.append)
    assert notice == Notice("terminate", float(deadline))
    assert len(drains) == 1
    left, message = drains[0]
    assert deadline - time.time() - 2 <= left <= 90
    assert message == f"spot terminate notice: reclaimed in {left} s"
    assert logs == [f"spot watcher: {message}; this node is draining (deadline {left} s)"]


def test_the_notice_comes_after_some_polls_and_an_expired_token(imds):
    drains, clock = [], None
    clock = Clock(at={3: imds.revoke_tokens, 4: lambda: imds.give_notice(120)})
    watch(AwsSpotMetadata(imds.url), lambda left, msg: drains.append(left), poll_s=5,
          log=lambda line: None, sleep=clock.sleep, stop=clock.stop)
    assert len(drains) == 1 and clock.polls == 4
    statuses = [r[2] for r in imds.requests if r[0] == "GET"]
    assert statuses == [404, 404, 401, 404, 200]     # a refused token: a new one, asked again
    assert [r[0] for r in imds.requests].count("PUT") == 2


def test_a_service_that_does_not_answer_is_polled_on_and_logged_once():
    port = free_port()                  # nobody listens here yet
    logs, drains, servers = [], [], []

    def start():
        servers.append(FakeIMDS(port))
        servers[0].give_notice(60)
    clock = Clock(at={6: start})
    try:
        watch(AwsSpotMetadata(f"http://127.0.0.1:{port}", timeout_s=0.5),
              lambda left, msg: drains.append(left), poll_s=5, log=logs.append,
              sleep=clock.sleep, stop=clock.stop)
    finally:
        for s in servers:
            s.close()
    assert clock.polls == 6 and len(drains) == 1
    assert len(logs) == 3, logs
    assert logs[0].startswith(f"spot watcher: the metadata service does not answer "
                              f"(http://127.0.0.1:{port}: URLError")
    assert logs[0].endswith("polling on every 5 s")
    assert logs[1] == "spot watcher: the metadata service answers again"
    assert "this node is draining" in logs[2]


def test_a_refused_drain_is_tried_again(imds):
    imds.give_notice(60)
    calls, logs = [], []

    def drain(left, msg):
        calls.append(left)
        if len(calls) == 1:
            raise RuntimeError("The drain request is not accepted: busy")
    watch(AwsSpotMetadata(imds.url), drain, poll_s=0.01, log=logs.append)
    assert len(calls) == 2
    assert "the drain failed (The drain request is not accepted: busy); trying again" in logs[0]


def test_notices_this_code_cannot_read_are_errors_not_drains():
    assert parse_notice(b'{"action": "stop", "time": "2026-12-02T14:30:00Z"}') == \
        Notice("stop", 1796221800.0)
    for body in (b"<html>", b'{"action": "terminate"}', b'{"action": "x", "time": "soon"}'):
        with pytest.raises(MetadataUnavailable, match="an instance-action this code does not read"):
            parse_notice(body)


def test_the_watcher_command_refuses_a_bad_poll_interval(capsys):
    from pipeline.spot import main
    with pytest.raises(SystemExit):
        main(["--poll-s", "0", "--node-id", "x"])
    assert "--poll-s 0.0: allowed: a number of seconds > 0" in capsys.readouterr().err


def test_the_watcher_command_without_a_ray_node_is_one_clear_error():
    """Started where no Ray node answers (the address is dead): exit 1 in seconds with one
    line that says what to do, not ray.init's minutes of retries or a traceback."""
    import os
    import subprocess
    import sys
    import time
    dead = f"127.0.0.1:{free_port()}"
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "pipeline.spot", "--address", dead],
                         capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 1 and time.time() - t0 < 30
    assert out.stderr.startswith("spot watcher: error: cannot find this machine's Ray node")
    assert f"no Ray cluster answers at {dead}" in out.stderr
    assert "Traceback" not in out.stderr
