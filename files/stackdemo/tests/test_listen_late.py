"""A web process whose address is not up yet waits for it instead of dying."""

import os
import shutil
import subprocess
import sys

import pytest

from helpers import Web, free_port, stop_process, wait_until

# TEST-NET-1: never routed; added to the loopback interface only for this test.
LATE_ADDRESS = "192.0.2.77"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="adds an address to the loopback interface: needs root and iproute2",
)
def test_web_listens_once_its_address_comes_up(configs, worker, tmp_path):
    port = free_port()
    log = tmp_path / "web.log"
    env = {**os.environ, "STACKDEMO_CONFIG": str(configs["web"])}
    cmd = [sys.executable, "-m", "stackdemo.web", "--address", LATE_ADDRESS]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: "not configured on this host yet" in log.read_text(),
            "the web to report that its address is missing",
            proc=proc,
            log=log,
        )
        subprocess.run(
            ["ip", "address", "add", f"{LATE_ADDRESS}/32", "dev", "lo"], check=True
        )
        try:
            web = Web(port=port, host=LATE_ADDRESS)
            wait_until(
                lambda: f"listening on {LATE_ADDRESS}" in log.read_text(),
                "the web to listen",
                timeout=40,
                proc=proc,
                log=log,
            )
            assert web.get("/add?x=20&y=22").json()["result"] == 42
        finally:
            subprocess.run(
                ["ip", "address", "del", f"{LATE_ADDRESS}/32", "dev", "lo"], check=True
            )
    finally:
        stop_process(proc)
