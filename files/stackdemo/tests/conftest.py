"""A real redis-server with ACL users, a real Celery worker and the web process."""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from acl_rules import monitor_rule, web_rule, worker_rule
from helpers import Web, free_port, stop_process, wait_until

TESTS = str(Path(__file__).resolve().parent)
# The example of a user's own project that the byo scenario deploys.
EXAMPLE_PROJECT = str(
    Path(__file__).resolve().parents[3] / "tests" / "example_project" / "src"
)
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
BROKER_DB = 1
RESULT_DB = 0
QUEUES = ("celery", "prio", "crash", "canvas")
# Test-only credentials for a server bound to 127.0.0.1 for one test run.
ADMIN = ("admin", "admin-secret")
WEB_USER = ("stackdemo-web", "web-secret")
WORKER_USER = ("stackdemo-worker", "worker-secret")
# A worker that answers `celery inspect` (remote_control), and who asks.
INSPECTED_WORKER_USER = ("stackdemo-worker-inspected", "inspected-secret")
MONITOR_USER = ("stackdemo-monitor", "monitor-secret")
# A worker that also sends events and heartbeats, watched by Flower.
MONITORED_WORKER_USER = ("stackdemo-worker-monitored", "monitored-secret")
VISIBILITY_TIMEOUT = 120
MAX_BODY_BYTES = 4096
MAX_WAIT_SECONDS = 30
ALLOWED_TASKS = ["stackdemo.tasks.add", "stackdemo.tasks.sleep_then_echo"]
TASK_ROUTES = {
    "stackdemo.tasks.add": {"queue": "celery"},
    "stackdemo.tasks.sleep_then_echo": {"queue": "celery"},
    # Matches no real task: it only makes "prio" a configured queue the API
    # may target, which the main worker leaves alone so test_priority can
    # fill it before a worker consumes it.
    "stackdemo.batch.*": {"queue": "prio"},
    # Likewise for "crash", the queue of the hard-crash tests' own worker.
    "stackdemo.crash.*": {"queue": "crash"},
    # A user's own project (tests/example_project), run by a worker of its own.
    "exampleproj.*": {"queue": "canvas"},
}


@dataclass
class RedisServer:
    port: int
    acl_file: Path

    def url(self, user: tuple[str, str], db: int) -> str:
        return f"redis://{user[0]}:{user[1]}@127.0.0.1:{self.port}/{db}"

    def client(self, db: int, user: tuple[str, str] = ADMIN) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            db=db,
            username=user[0],
            password=user[1],
            socket_timeout=10,
        )


def _ping(server: RedisServer) -> bool:
    try:
        return bool(server.client(0).ping())
    except redis.RedisError:
        return False


def write_acl_file(path: Path, queues: tuple[str, ...]) -> Path:
    """The deployment's users and rules; the default user off, an admin for tests."""
    monitored = worker_rule(
        MONITORED_WORKER_USER[1], queues, remote_control=True, events=True
    )
    inspected = worker_rule(INSPECTED_WORKER_USER[1], queues, remote_control=True)
    users = [
        "default off",
        f"{ADMIN[0]} on >{ADMIN[1]} ~* &* +@all",
        f"{WEB_USER[0]} {web_rule(WEB_USER[1], queues)}",
        f"{WORKER_USER[0]} {worker_rule(WORKER_USER[1], queues)}",
        f"{INSPECTED_WORKER_USER[0]} {inspected}",
        f"{MONITORED_WORKER_USER[0]} {monitored}",
        f"{MONITOR_USER[0]} {monitor_rule(MONITOR_USER[1], queues)}",
    ]
    path.write_text("".join(f"user {user}\n" for user in users))
    return path


def write_redis_config(
    workdir: Path, queues: tuple[str, ...], persistence: str = "appendonly no"
) -> tuple[Path, RedisServer]:
    """redis.conf on a free loopback port, the deployment's users; and its server."""
    acl_file = write_acl_file(workdir / "users.acl", queues)
    port = free_port()
    conf = workdir / "redis.conf"
    conf.write_text(
        f'port {port}\nbind 127.0.0.1\ndir {workdir}\nsave ""\n{persistence}\n'
        f"aclfile {acl_file}\nlogfile {workdir / 'redis.log'}\n"
    )
    return conf, RedisServer(port=port, acl_file=acl_file)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    conf, server = write_redis_config(tmp_path_factory.mktemp("redis"), QUEUES)
    proc = subprocess.Popen([REDIS_SERVER, str(conf)])
    try:
        wait_until(lambda: _ping(server), "redis-server to answer", proc=proc)
        yield server
    finally:
        stop_process(proc)


def _write_config(path: Path, data: dict[str, Any]) -> Path:
    # Same shape as Ansible's to_nice_json output.
    path.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")
    return path


@pytest.fixture(scope="session")
def configs(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    workdir = tmp_path_factory.mktemp("config")
    common = {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "result_expires": 600,
        "default_queue": "celery",
        "task_routes": TASK_ROUTES,
    }
    worker = {
        **common,
        "broker_url": redis_server.url(WORKER_USER, BROKER_DB),
        "result_backend": redis_server.url(WORKER_USER, RESULT_DB),
        "add_delay_seconds": 0,
    }
    web = {
        **common,
        "broker_url": redis_server.url(WEB_USER, BROKER_DB),
        "result_backend": redis_server.url(WEB_USER, RESULT_DB),
        "web": {
            "allowed_tasks": ALLOWED_TASKS,
            "max_wait_seconds": MAX_WAIT_SECONDS,
            "max_body_bytes": MAX_BODY_BYTES,
            "max_eta_past_seconds": 60,
        },
    }
    return {
        "worker": _write_config(workdir / "worker.json", worker),
        "web": _write_config(workdir / "web.json", web),
    }


@pytest.fixture(scope="session")
def start_worker(
    configs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., tuple[subprocess.Popen, Path]]]:
    started: list[subprocess.Popen] = []

    def start(
        name: str,
        queues: str = "celery",
        pool: str = "prefork",
        concurrency: int = 2,
        app: str = "stackdemo.celery_app",
        config: Path | None = None,
        heartbeat: bool = False,
    ) -> tuple[subprocess.Popen, Path]:
        log = tmp_path_factory.mktemp(f"worker-{name}") / "worker.log"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "--pool",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            queues,
            "-n",
            f"{name}@%h",
            "-l",
            "INFO",
            # Gossip, mingle and heartbeats use broadcast pub/sub channels
            # that the worker's ACL does not grant (and we do not need).
            "--without-gossip",
            "--without-mingle",
            *([] if heartbeat else ["--without-heartbeat"]),
        ]
        env = {
            **os.environ,
            "STACKDEMO_CONFIG": str(config or configs["worker"]),
            # A user's project, as if installed beside the stack.
            "PYTHONPATH": os.pathsep.join(
                filter(None, [EXAMPLE_PROJECT, os.environ.get("PYTHONPATH")])
            ),
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent
            )
        started.append(proc)
        wait_until(
            lambda: " ready." in log.read_text(errors="replace"),
            f"worker {name} to be ready",
            proc=proc,
            log=log,
        )
        return proc, log

    yield start
    for proc in started:
        stop_process(proc)


@pytest.fixture(scope="session")
def worker(start_worker: Callable[..., tuple[subprocess.Popen, Path]]):
    return start_worker("main")


def start_web(config: Path, workdir: Path) -> Web:
    port = free_port()
    log = workdir / "web.log"
    env = {**os.environ, "STACKDEMO_CONFIG": str(config)}
    cmd = [sys.executable, "-m", "stackdemo.web", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    web = Web(port=port, process=proc, log=log)

    def listening() -> bool:
        try:
            return web.get("/metrics", timeout=5).status == 200
        except OSError:
            return False

    wait_until(listening, "the web process to listen", proc=proc, log=log)
    return web


@pytest.fixture(scope="session")
def web(
    configs: dict[str, Path], worker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Web]:
    app = start_web(configs["web"], tmp_path_factory.mktemp("web"))
    yield app
    assert app.process is not None
    stop_process(app.process)


@pytest.fixture
def broker_db(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client(BROKER_DB)


@pytest.fixture
def result_db(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client(RESULT_DB)
