"""Celery beat sends its schedule, as the worker ACL user, to a real worker."""

import json
import os
import subprocess
import sys

import pytest

from helpers import stop_process, wait_until
from stackdemo.config import ConfigError, parse_config

# An addition no other test submits, so its result can only come from beat.
BEAT_ARGS = [4000, 2]


def _results(result_db) -> list:
    found = []
    for key in result_db.scan_iter("celery-task-meta-*"):
        meta = json.loads(result_db.get(key) or "{}")
        if meta.get("status") == "SUCCESS":
            found.append(meta.get("result"))
    return found


def test_beat_sends_the_schedule_and_the_worker_runs_it(
    configs, worker, result_db, tmp_path
):
    config = json.loads(configs["worker"].read_text())
    config["beat_schedule"] = {
        "tick": {"task": "stackdemo.tasks.add", "every_seconds": 1, "args": BEAT_ARGS}
    }
    path = tmp_path / "beat.json"
    path.write_text(json.dumps(config))
    log = tmp_path / "beat.log"
    cmd = [sys.executable, "-m", "celery", "-A", "stackdemo.beat_app", "beat"]
    cmd += ["--schedule", str(tmp_path / "schedule"), "-l", "INFO"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, "STACKDEMO_CONFIG": str(path)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_until(
            lambda: _results(result_db).count(sum(BEAT_ARGS)) >= 2,
            "two periodic additions computed by the worker",
            proc=proc,
            log=log,
        )
    finally:
        stop_process(proc)


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"every_seconds": 5}, "needs 'task'"),
        ({"task": "stackdemo.tasks.add"}, "needs 'every_seconds'"),
        ({"task": "stackdemo.tasks.add", "every_seconds": 0}, "every_seconds"),
        ({"task": "not a task", "every_seconds": 5}, "task"),
        ({"task": "stackdemo.tasks.add", "every_seconds": 5, "args": "1,2"}, "args"),
        ({"task": "stackdemo.tasks.add", "every_seconds": 5, "cron": "* * *"}, "cron"),
    ],
)
def test_bad_beat_entries_are_refused_with_the_key_named(entry, complaint):
    data = {"broker_url": "redis://h/1", "result_backend": "redis://h/0"}
    with pytest.raises(ConfigError, match="beat_schedule") as error:
        parse_config({**data, "beat_schedule": {"tick": entry}})
    assert complaint in str(error.value)
