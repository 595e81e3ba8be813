"""A web process restarted behind a socket it inherited refuses no client.

This is how the role runs the web: systemd owns the listening socket
(stackdemo-web@PORT.socket) and hands it to each new process, so connections
made while one process stops and the next starts wait in the kernel's queue.
"""

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from helpers import Web, stop_process, wait_until

SD_LISTEN_FDS_START = 3


def _start_with_socket(
    config: Path, sock: socket.socket, log: Path
) -> subprocess.Popen:
    """Start the web as systemd would: the socket as fd 3, LISTEN_PID its own pid."""

    def hand_over() -> None:
        # dup2 leaves the copy inheritable; Python's own descriptors are not,
        # hence close_fds=False below keeps only this one across exec.
        os.dup2(sock.fileno(), SD_LISTEN_FDS_START)

    env = {**os.environ, "STACKDEMO_CONFIG": str(config), "LISTEN_FDS": "1"}
    port = str(sock.getsockname()[1])
    # The shell's pid is the program's: exec keeps it.
    command = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", sys.executable]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, "-m", "stackdemo.web", "--port", port],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            close_fds=False,
            preexec_fn=hand_over,
        )


def _healthy(web: Web) -> bool:
    try:
        return web.get("/healthz", timeout=5).status == 200
    except OSError:
        return False


def test_a_restart_behind_an_inherited_socket_refuses_no_client(
    configs, worker, tmp_path
):
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    web = Web(port=listener.getsockname()[1])
    log = tmp_path / "web.log"
    first = _start_with_socket(configs["web"], listener, log)
    wait_until(lambda: _healthy(web), "the first process to serve", proc=first, log=log)
    assert "(socket from systemd)" in log.read_text()

    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def client() -> None:
        x = 0
        while not stop.is_set():
            x += 1
            try:
                response = web.get(f"/add?x={x}&y=1", timeout=30)
                ok = response.status == 200 and response.json()["result"] == x + 1
                outcomes["answered" if ok else f"HTTP {response.status}"] += 1
            except OSError as exc:
                outcomes[type(exc).__name__] += 1

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    # A long poll on a task that never finishes: the stopping process answers
    # it with the state so far instead of holding the restart for 30 s.
    long_poll: dict = {}

    def poll() -> None:
        started = time.monotonic()
        long_poll["response"] = web.get(f"/api/tasks/{uuid.uuid4()}?wait=30")
        long_poll["seconds"] = time.monotonic() - started

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        wait_until(lambda: outcomes["answered"] >= 20, "load before the restart")
        first.terminate()
        first.wait(20)
        # Until the next process accepts, connections wait in the queue.
        second = _start_with_socket(configs["web"], listener, log)
        answered_before = outcomes["answered"]
        wait_until(
            lambda: outcomes["answered"] >= answered_before + 20,
            "the next process to answer",
            proc=second,
            log=log,
        )
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
        poller.join(60)
    try:
        assert set(outcomes) == {"answered"}, outcomes
        response = long_poll["response"]
        assert response.status == 200, response.text
        assert response.json()["state"] == "PENDING"
        assert long_poll["seconds"] < 25, long_poll
        assert first.returncode == 0
    finally:
        stop_process(second)
        listener.close()
