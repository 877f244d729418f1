"""A local stand-in for the Hub's download endpoint, enough for ``huggingface_hub`` to fetch files.

It answers ``HEAD`` and ``GET`` on ``/<repo>/resolve/<revision>/<file>`` the way the Hub answers for a
large (LFS) file: ``X-Repo-Commit`` (the commit the revision names), ``X-Linked-Etag`` (the sha256 it
publishes for the file), ``X-Linked-Size`` and the bytes. A revision is either a branch in
``branches`` or the commit itself; anything else is a 404 as the Hub gives it. Every request is logged in
``requests`` as ``(method, path)`` so a test can see what was downloaded.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class StandInHub:
    """Files of one repository at one commit; ``published`` overrides the sha256 the Hub announces."""

    repo: str
    files: dict[str, bytes]
    commit: str = COMMIT
    branches: tuple[str, ...] = ("main",)
    published: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def downloads(self) -> list[str]:
        """The file names fetched with GET, in order."""
        return [path.rsplit("/", 1)[-1] for method, path in self.requests if method == "GET"]

    def sha256(self, name: str) -> str:
        return self.published.get(name) or hashlib.sha256(self.files[name]).hexdigest()

    def __enter__(self) -> StandInHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet: the test reads hub.requests
                pass

            def _answer(self, body: bool) -> None:
                path = unquote(self.path.split("?", 1)[0])
                hub.requests.append((self.command, path))
                prefix = f"/{hub.repo}/resolve/"
                revision, _, name = (
                    path[len(prefix) :].partition("/") if path.startswith(prefix) else ("", "", "")
                )
                if revision not in (hub.commit, *hub.branches):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RevisionNotFound")
                    self.send_header("X-Error-Message", f"Invalid rev id: {revision}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", hub.commit)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = hub.files[name]
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", f'"{hub.sha256(name)}"')
                self.send_header("X-Linked-Etag", f'"{hub.sha256(name)}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
