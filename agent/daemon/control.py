"""The agent's control socket: a Unix socket in the state directory, one JSON request per connection.

``vmkeep jobs run`` asks a running agent to start a run (so the run is the agent's: history,
metrics and the never-twice rule apply); ``vmkeep jobs`` asks it for its status (next runs).
Only the agent's user (and root) can connect: the socket is created mode 0600.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOCKET_NAME = "agent.sock"
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer:
    def __init__(self, path: Path, handle: Handler) -> None:
        self.path = path
        handler = handle

        class _Request(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    request = json.loads(self.rfile.readline(MAX_REQUEST))
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    answer = handler(request)
                except (ValueError, KeyError) as exc:
                    answer = {"ok": False, "error": str(exc)}
                self.wfile.write(json.dumps(answer).encode() + b"\n")

        if path.is_socket() and not _listening(path):
            path.unlink()  # left by an agent that died
        old = os.umask(0o177)
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(path), _Request)
        finally:
            os.umask(old)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="vmkeep-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def ask(path: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any] | None:
    """The agent's answer, or None when no agent listens on ``path``."""
    if not path.is_socket():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError:
            return None
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer
