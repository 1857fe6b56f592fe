"""A fake AWS instance metadata service (IMDSv2) on 127.0.0.1 with the real HTTP contract of
the spot instance-action endpoint: ``PUT /latest/api/token`` (with a TTL header) gives a token;
``GET /latest/meta-data/spot/instance-action`` needs it (401 without), answers 404 until
``give_notice`` and then the JSON notice. ``requests`` counts what it was asked."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeIMDS:
    def __init__(self, port: int = 0):
        self.notice: dict | None = None
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str, int]] = []     # (method, path, status)
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):       # quiet
                pass

            def _send(self, status: int, body: bytes = b""):
                imds.requests.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                if self.path != "/latest/api/token" or \
                        not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(400)
                token = f"token-{len(imds.tokens)}"
                imds.tokens.add(token)
                self._send(200, token.encode())

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                    return self._send(401)
                if self.path != "/latest/meta-data/spot/instance-action" or imds.notice is None:
                    return self._send(404, b"<html>Not Found</html>")
                self._send(200, json.dumps(imds.notice).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def give_notice(self, seconds: int, action: str = "terminate") -> float:
        """AWS's notice of a reclaim ``seconds`` from now (whole seconds, as AWS writes it);
        returns its deadline (epoch s)."""
        deadline = int(time.time()) + seconds
        self.notice = {"action": action,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline))}
        return deadline

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
