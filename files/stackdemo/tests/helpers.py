"""Small synchronous helpers shared by the tests."""

import http.client
import json
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    predicate: Callable[[], Any],
    what: str,
    timeout: float = 20,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> Any:
    """Poll until predicate() is truthy; a bound, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        problem = None
        if proc is not None and proc.poll() is not None:
            problem = f"process exited ({proc.returncode}) before {what}"
        elif time.monotonic() > deadline:
            problem = f"gave up waiting for {what}"
        if problem:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"{problem}\n{tail}")
        time.sleep(0.05)


def unacked_messages(broker_db: Any) -> int:
    """Messages delivered and not yet acknowledged, over every worker node."""
    return sum(broker_db.hlen(key) for key in broker_db.scan_iter("unacked@*"))


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Web:
    port: int
    process: subprocess.Popen | None = None
    log: Path | None = None
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Response:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, resp.headers, resp.read().decode())
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post_json(self, path: str, payload: Any) -> Response:
        return self.request(
            "POST",
            path,
            body=json.dumps(payload),
            headers={"Content-Type": "application/json"},
        )

    def submit(self, name: str, **payload: Any) -> str:
        resp = self.post_json(f"/api/tasks/{name}", payload)
        assert resp.status == 202, resp.text
        return resp.json()["task_id"]

    def wait(self, task_id: str, seconds: float = 20) -> dict[str, Any]:
        resp = self.get(f"/api/tasks/{task_id}?wait={seconds}")
        assert resp.status == 200, resp.text
        return resp.json()
