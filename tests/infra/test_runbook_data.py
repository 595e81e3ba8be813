"""The data runbooks (backup, restore, purge), run from the controller as an operator would.

They stop Redis and worker pools under the whole stack, so they run on an all-in-one host only
(see `aio`), and leave every unit active and the stack answering for the tests after them.
"""

import hashlib
import json
import os
import shlex
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import local_fact
from stackcheck import http_get, redis_endpoint, web_url
from test_runbooks import PROJECT, _held_message, admin_cli, recap_changed, runbook

CONFIRM = "run again with -e confirm=yes"


class AllInOne:
    """The host and what the tests need of it; its repr keeps the credentials out of reports."""

    def __init__(self, host, worker_config, admin, queues, pools):
        self.host, self.worker_config, self.admin = host, worker_config, admin
        self.queues = queues
        # A pool that does not serve the default queue: stopped, it leaves messages queued.
        others = [p for p in pools if worker_config["default_queue"] not in p["queues"]]
        self.idle_pool = others[0]["name"] if others else None
        self.idle_queue = others[0]["queues"][0] if others else None

    def __repr__(self):
        return f"<all-in-one host {self.host.inventory_name}>"

    def cli(self, *command):
        """redis-cli as the admin user, on the broker database."""
        return admin_cli(self.host, self.worker_config, self.admin, *command)

    def broker(self):
        """What status.yml counts: queue depths, held messages, dead letters."""
        with open(os.path.join(PROJECT, "playbooks", "ops", "files", "broker-status.lua")) as script:
            return json.loads(self.cli("EVAL", script.read(), "0", ":", *self.queues))

    def queued(self, queue):
        """Ids of the tasks waiting in a queue, over its priority lists."""
        lists = [queue] + [f"{queue}:{priority}" for priority in range(1, 10)]
        script = (
            "local ids = {} for _, list in ipairs(KEYS) do"
            " for _, m in ipairs(redis.call('LRANGE', list, 0, -1)) do"
            " table.insert(ids, cjson.decode(m).headers.id) end end return ids"
        )
        return set(self.cli("EVAL", script, str(len(lists)), *lists).split())

    def config(self, name):
        return self.cli("CONFIG", "GET", name).split()[1]

    def pid(self):
        return self.cli("INFO", "server").split("process_id:")[1].split()[0]


@pytest.fixture
def aio(inventory, redis_host, worker_hosts, web_hosts, worker_config, admin):
    # The restore stops Redis under every tier, and these tests stop pools by hand and read what
    # came back through the web front: one host that is all three tiers keeps that simple. CI
    # time is short, so they run in one scenario only: the all-in-one `default` (and the lab).
    name = redis_host.inventory_name
    if [h.inventory_name for h in worker_hosts] != [name] or [h.inventory_name for h in web_hosts] != [name]:
        pytest.skip("the data runbooks are tested where one host is in redis, celery_workers and web")
    pools = inventory.get_variables(name)["celery_worker_pools"]
    # The inventory's queues, as stack_celery_queues derives them.
    queues = sorted({queue for pool in pools for queue in pool["queues"]} | {worker_config["default_queue"]})
    yield AllInOne(redis_host, worker_config, admin, queues, pools)
    # Whatever a test stopped, even if it failed halfway: every unit back and the stack answering.
    redis_host.check_output("systemctl start " + " ".join(_our_units(redis_host)))
    _stack_is_healthy(redis_host)


def _submit(host, *tasks):
    """POST each (task name, body) to the web front in one go; the task ids."""
    script = (
        "import json, sys, urllib.request\n"
        "for name, body in json.loads(sys.argv[2]):\n"
        "    request = urllib.request.Request(sys.argv[1] + name, data=json.dumps(body).encode(),"
        " headers={'Content-Type': 'application/json'})\n"
        "    with urllib.request.urlopen(request, timeout=30) as answer:\n"
        "        assert answer.status == 202, answer.status\n"
        "        print(json.loads(answer.read())['task_id'])\n"
    )
    args = shlex.join([script, web_url(host, "/api/tasks/"), json.dumps(tasks)])
    return host.check_output(f"python3 -c {args}").split()


def _result(host, task_id, wait=30):
    """The task's state and result, waiting up to `wait` seconds for it to finish (None: now)."""
    query = "" if wait is None else f"?wait={wait}"
    status, body = http_get(host, web_url(host, f"/api/tasks/{task_id}{query}"))
    assert status == 200, body
    return body


def _in_parallel(*runs):
    """Runbook runs that only read or refuse, side by side: CI time is short."""
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        return list(pool.map(lambda extra: runbook(*extra), runs))


def _plain(run):
    """The run's output on one line: the YAML callback wraps long messages."""
    return " ".join(run.stdout.split())


def _our_units(host):
    units = [local_fact(host, "stack_redis")["service"] + ".service"]
    worker = local_fact(host, "stack_celery_worker")
    units += worker["units"] + (["celery-beat.service"] if worker["beat"] else [])
    return units + local_fact(host, "stack_web")["units"]


def _stack_is_healthy(host):
    deadline = time.monotonic() + 60
    for unit in _our_units(host):
        while not host.service(unit).is_running:
            assert time.monotonic() < deadline, f"{unit} is not active"
            time.sleep(1)
    status, body = http_get(host, web_url(host, "/healthz"))
    assert status == 200, body
    status, body = http_get(host, web_url(host, "/add?x=40&y=2"))
    assert status == 200 and body["result"] == 42, body


def _fake_backup(directory, content, sha256=None):
    """A backup directory as backup.yml writes it, with a snapshot of our choosing."""
    directory.mkdir()
    (directory / "dump.rdb").write_bytes(content)
    manifest = {
        "format": 1,
        "host": "elsewhere",
        "file": "dump.rdb",
        "sha256": sha256 or hashlib.sha256(content).hexdigest(),
        "saved_at": "2026-01-01T00:00:00Z",
        "redis_version": "7.0.0",
        "keys": 1,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return str(directory)


def test_backup_then_restore_onto_an_emptied_host(aio, web_hosts, tmp_path):
    if aio.idle_pool is None:
        pytest.skip("needs a pool that does not serve the default queue")
    web, host, queue = web_hosts[0], aio.host, aio.idle_queue

    # Results stored, a message the default pool holds for its countdown, and messages queued
    # for a pool that is stopped (one in a priority list).
    finished = _submit(web, *(("stackdemo.tasks.add", {"args": [i, 100]}) for i in range(3)))
    for i, task_id in enumerate(finished):
        assert _result(web, task_id)["result"] == i + 100
    held = _held_message(host, aio.worker_config, aio.admin, web_hosts)[0]["headers"]["id"]
    host.check_output(f"systemctl stop celery-worker@{aio.idle_pool}")
    queued = set(
        _submit(
            web,
            ("stackdemo.tasks.sleep_then_echo", {"args": ["queued", 0], "queue": queue}),
            ("stackdemo.tasks.sleep_then_echo", {"args": ["urgent", 0], "queue": queue, "priority": 5}),
        )
    )
    assert aio.queued(queue) == queued

    # The backup, and meanwhile two restores refused before they touch anything.
    snapshot, pid = tmp_path / "backup", aio.pid()
    corrupt_dir = _fake_backup(tmp_path / "bad", b"REDIS0010", sha256="f" * 64)
    backup, corrupt, unconfirmed = _in_parallel(
        ("backup.yml", "-e", f"backup_dir={snapshot}"),
        ("restore.yml", "-e", f"restore_from={corrupt_dir}", "-e", "confirm=yes"),
        ("restore.yml", "-e", f"restore_from={_fake_backup(tmp_path / 'good', b'REDIS0010')}"),
    )
    assert backup.returncode == 0, backup.stdout[-3000:] + backup.stderr[-3000:]
    assert corrupt.returncode != 0 and "does not match the sha256" in _plain(corrupt), corrupt.stdout
    assert unconfirmed.returncode != 0 and CONFIRM in _plain(unconfirmed), unconfirmed.stdout
    assert recap_changed(corrupt.stdout) == recap_changed(unconfirmed.stdout) == 0
    assert aio.pid() == pid
    assert aio.queued(queue) == queued
    manifest = json.loads((snapshot / "manifest.json").read_text())
    rdb = (snapshot / manifest["file"]).read_bytes()
    assert hashlib.sha256(rdb).hexdigest() == manifest["sha256"] and rdb.startswith(b"REDIS")
    assert manifest["broker"]["queues"][queue] == 2 and manifest["keys"] > 0

    # A new host, as site.yml leaves one: Redis started on an empty data directory.
    data_dir, aof_dir, rdb_file = (aio.config(name) for name in ("dir", "appenddirname", "dbfilename"))
    unit = local_fact(host, "stack_redis")["service"]
    gone = " ".join(shlex.quote(f"{data_dir}/{name}") for name in (aof_dir, rdb_file))
    host.check_output(f"systemctl stop {unit} && rm -rf {gone} && systemctl start {unit}")
    result_db = str(redis_endpoint(aio.worker_config["result_backend"])[4])
    assert aio.cli("-n", result_db, "EXISTS", f"celery-task-meta-{finished[0]}").strip() == "0"
    assert aio.broker()["queues"][queue] == 0

    restore = runbook("restore.yml", "-e", f"restore_from={snapshot}", "-e", "confirm=yes")
    assert restore.returncode == 0, restore.stdout[-3000:] + restore.stderr[-3000:]
    assert f"({manifest['keys']} keys;" in _plain(restore)

    # The results and the queued messages are back (the pool is still stopped), the AOF on, the
    # data from before aside.
    for i, task_id in enumerate(finished):
        answer = _result(web, task_id, wait=None)
        assert answer["state"] == "SUCCESS" and answer["result"] == i + 100, answer
    assert aio.queued(queue) == queued
    assert aio.config("appendonly") == "yes"
    aside = f"{shlex.quote(data_dir)}/before-restore-*"
    assert host.run(f"test -d {aside}/{shlex.quote(aof_dir)}").rc == 0
    host.check_output(f"rm -rf {aside}")
    # The held message too: its pool requeued it when it reconnected, as after any Redis restart.
    answer = _result(web, held)
    assert answer["state"] == "SUCCESS" and answer["result"] == 42, answer


def test_purge_refuses_then_empties_one_queue_only(aio, web_hosts):
    if aio.idle_pool is None:
        pytest.skip("needs a pool that does not serve the default queue")
    web, host, queue = web_hosts[0], aio.host, aio.idle_queue
    others = [name for name in aio.queues if name != queue]
    # Every consumer of the queues stops, and beat, which would add its periodic tasks; the
    # module's teardown starts them again.
    worker = local_fact(host, "stack_celery_worker")
    host.check_output(
        "systemctl stop " + " ".join(worker["units"] + (["celery-beat.service"] if worker["beat"] else []))
    )
    dead_letter = "not a message: kept by the purge of a queue"
    try:
        # Messages in every queue (the purged one in three priority lists), and a dead letter.
        _submit(web, *(("stackdemo.tasks.add", {"args": [1, 2], "queue": name}) for name in others))
        echo = "stackdemo.tasks.sleep_then_echo"
        _submit(web, *((echo, {"args": [p, 0], "queue": queue, "priority": p}) for p in (0, 3, 9)))
        aio.cli("LPUSH", "stack@dead-letters", dead_letter)
        before = aio.broker()
        purged = before["queues"][queue]
        assert purged >= 3

        unconfirmed, unknown = _in_parallel(
            ("purge.yml", "-e", f"purge_queue={queue}"),
            ("purge.yml", "-e", "purge_queue=no-such-queue", "-e", "confirm=yes"),
        )
        assert unconfirmed.returncode != 0 and CONFIRM in _plain(unconfirmed), unconfirmed.stdout
        assert unknown.returncode != 0 and "purge_queue: 'no-such-queue' is not a queue" in _plain(unknown)
        assert recap_changed(unconfirmed.stdout) == recap_changed(unknown.stdout) == 0
        assert aio.broker() == before

        purge = runbook("purge.yml", "-e", f"purge_queue={queue}", "-e", "confirm=yes")
        assert purge.returncode == 0, purge.stdout[-3000:] + purge.stderr[-3000:]
        assert f"Removed {purged} message(s) from queue {queue}" in _plain(purge)
        assert recap_changed(purge.stdout) == 1
        after = aio.broker()
        assert after["queues"][queue] == 0
        # Every other queue, the messages workers hold and the dead letters are as they were.
        after["queues"].pop(queue), before["queues"].pop(queue)
        assert after == before
        assert aio.cli("LINDEX", "stack@dead-letters", "0").strip() == dead_letter
    finally:
        aio.cli("LREM", "stack@dead-letters", "1", dead_letter)
