"""A spot instance's reclaim notice, passed on to Ray as a drain of its own node.

AWS tells a spot instance about two minutes ahead that it will be reclaimed, through the
instance metadata service (IMDSv2): ``PUT /latest/api/token`` gives a session token, then
``GET /latest/meta-data/spot/instance-action`` answers 404 until a notice exists and then
``{"action": "terminate" | "stop" | "hibernate", "time": "2026-12-02T14:30:00Z"}``. Ray does
not read it. ``cluster.yaml`` starts this watcher on every spot worker node
(``python -m pipeline.spot``); on a notice it drains its own node with the notice's deadline
(``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds N``), which
is what Ray Train's preemption handling watches: the run takes a just-in-time checkpoint and is
restarted on the nodes that stay (``lmc.train``; docs/design.md §8).

Other clouds, the same idea with their own endpoint (not shipped; the watcher's loop takes any
``notice()`` source):
- GCP spot/preemptible VMs: ``GET http://metadata.google.internal/computeMetadata/v1/instance/
  preempted`` with ``Metadata-Flavor: Google`` turns ``TRUE`` ~30 s before the stop (ACPI soft
  off follows); use ``?wait_for_change=true`` to block instead of polling.
- Azure spot VMs: Scheduled Events, ``GET http://169.254.169.254/metadata/scheduledevents?
  api-version=2020-07-01`` with ``Metadata: true``; an event of ``EventType: "Preempt"`` with
  ``NotBefore`` (>= 30 s ahead) is the notice.

The watcher drains once and exits: the node is going away. A metadata service that does not
answer is logged once (and once more when it answers again) and polled on.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone

AWS_METADATA = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
NOTICE_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_S = 21600          # IMDSv2's maximum; the token is renewed when it is refused (401)
POLL_S = 5.0                 # AWS's own advice for the instance-action endpoint
HTTP_TIMEOUT_S = 2.0


class MetadataUnavailable(Exception):
    """The metadata service did not answer (or answered something this code does not read)."""


@dataclass(frozen=True)
class Notice:
    action: str              # terminate | stop | hibernate
    deadline: float          # epoch seconds when the instance is reclaimed

    def seconds_left(self, now: float) -> int:
        """Whole seconds until the deadline (rounded down, never negative)."""
        return max(0, int(self.deadline - now))


class AwsSpotMetadata:
    """The instance-action endpoint of AWS's instance metadata service (IMDSv2)."""

    def __init__(self, base: str = AWS_METADATA, timeout_s: float = HTTP_TIMEOUT_S):
        self.base, self.timeout_s, self._token = base.rstrip("/"), timeout_s, None

    def _request(self, method: str, path: str, headers: dict) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, ValueError) as e:      # refused, timed out, unreachable, bad URL
            raise MetadataUnavailable(f"{self.base}: {type(e).__name__}: {e}") from None

    def _fresh_token(self) -> str:
        status, body = self._request("PUT", TOKEN_PATH,
                                     {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
        if status != 200:
            raise MetadataUnavailable(f"{self.base}{TOKEN_PATH}: HTTP {status}")
        return body.decode()

    def notice(self) -> Notice | None:
        """The reclaim notice, or None while there is none (404)."""
        for _ in range(2):                       # once more with a new token after a 401
            self._token = self._token or self._fresh_token()
            status, body = self._request("GET", NOTICE_PATH,
                                         {"X-aws-ec2-metadata-token": self._token})
            if status == 401:
                self._token = None
                continue
            if status == 404:
                return None
            if status != 200:
                raise MetadataUnavailable(f"{self.base}{NOTICE_PATH}: HTTP {status}")
            return parse_notice(body)
        raise MetadataUnavailable(f"{self.base}{NOTICE_PATH}: the token was refused twice")


def parse_notice(body: bytes) -> Notice:
    """``{"action": ..., "time": "YYYY-MM-DDTHH:MM:SSZ"}`` -> Notice."""
    try:
        doc = json.loads(body)
        when = datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return Notice(str(doc["action"]), when.timestamp())
    except (ValueError, KeyError, TypeError) as e:
        raise MetadataUnavailable(f"an instance-action this code does not read ({e}): "
                                  f"{body[:200]!r}") from None


def this_node_id(address: str | None) -> str:
    """The id of the Ray node on this machine (a driver joins its local raylet, asks, leaves)."""
    import ray

    from pipeline.cluster import probe
    if address:
        probe(address)          # a dead address fails in seconds (ray.init would wait minutes)
    ray.init(address=address or "auto", log_to_driver=False, logging_level="ERROR")
    try:
        return ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()


def ray_drain(node_id: str, address: str | None):
    """A drain function: ``ray drain-node`` of ``node_id`` with the deadline it is given, as a
    preemption. Raises RuntimeError when Ray refuses."""
    def drain(seconds_left: int, message: str) -> None:
        cmd = ["ray", "drain-node", "--node-id", node_id, "--reason",
               "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", message,
               "--deadline-remaining-seconds", str(seconds_left)]
        cmd += ["--address", address] if address else []
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: "
                               f"{(done.stderr or done.stdout).strip()[-500:]}")
    return drain


def watch(metadata, drain, *, poll_s: float = POLL_S, log=print, now=time.time,
          sleep=time.sleep, stop=lambda: False) -> Notice | None:
    """Poll ``metadata.notice()`` every ``poll_s`` until a notice comes, then
    ``drain(seconds_left, message)`` once and return the notice (None when ``stop()``). A
    service that does not answer is logged once per outage; a refused drain is logged and
    tried again at the next poll."""
    down = False
    while not stop():
        try:
            notice = metadata.notice()
        except MetadataUnavailable as e:
            if not down:
                log(f"spot watcher: the metadata service does not answer ({e}); polling on "
                    f"every {poll_s:g} s")
            down = True
            sleep(poll_s)
            continue
        if down:
            log("spot watcher: the metadata service answers again")
            down = False
        if notice is not None:
            left = notice.seconds_left(now())
            message = f"spot {notice.action} notice: reclaimed in {left} s"
            try:
                drain(left, message)
            except Exception as e:
                log(f"spot watcher: {message}; the drain failed ({e}); trying again")
                sleep(poll_s)
                continue
            log(f"spot watcher: {message}; this node is draining (deadline {left} s)")
            return notice
        sleep(poll_s)
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.spot",
        description="Drain this Ray node as a preemption when its spot instance gets a reclaim "
                    "notice from AWS's instance metadata service (IMDSv2).")
    p.add_argument("--metadata-url", default=AWS_METADATA,
                   help="the instance metadata service (default: %(default)s)")
    p.add_argument("--node-id", help="the Ray node to drain (default: this machine's node)")
    p.add_argument("--address", help="the Ray cluster's GCS address (default: the one this "
                   "machine's `ray start` joined)")
    p.add_argument("--poll-s", type=float, default=POLL_S,
                   help="seconds between polls (default: %(default)s)")
    a = p.parse_args(argv)
    if not a.poll_s > 0:
        p.error(f"--poll-s {a.poll_s}: allowed: a number of seconds > 0")
    try:
        node = a.node_id or this_node_id(a.address)
    except Exception as e:          # no Ray node on this machine, or the address is wrong
        print(f"spot watcher: error: cannot find this machine's Ray node ({type(e).__name__}: "
              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); start Ray here "
              "first (`ray start --address ...`), or pass --node-id and --address", file=sys.stderr)
        return 1
    print(f"spot watcher: node {node}: polling {a.metadata_url}{NOTICE_PATH} every "
          f"{a.poll_s:g} s", flush=True)
    watch(AwsSpotMetadata(a.metadata_url), ray_drain(node, a.address), poll_s=a.poll_s,
          log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
