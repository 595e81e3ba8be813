"""The web's listen queue follows the host's limit, not Tornado's 128."""

import shutil
import subprocess
from pathlib import Path

import pytest

from stackdemo.web.server import default_backlog


def _listen_queue(port: int) -> int:
    # For a listening socket ss reports the accept queue's length as Send-Q.
    line = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(line[2])


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_the_web_listens_with_the_hosts_somaxconn(web):
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert _listen_queue(web.port) == max(128, somaxconn)


def test_default_backlog_reads_somaxconn(tmp_path):
    limit = tmp_path / "somaxconn"
    limit.write_text("4096\n")
    assert default_backlog(str(limit)) == 4096
    limit.write_text("64\n")
    assert default_backlog(str(limit)) == 128
    assert default_backlog(str(tmp_path / "missing")) == 128
