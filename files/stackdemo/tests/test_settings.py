"""Celery settings for the worker and for the web's producer."""

import importlib
import json
import sys

import pytest
from celery.backends.base import DisabledBackend

from stackdemo import tasks
from stackdemo.apps import create_producer_app, create_worker_app
from stackdemo.config import parse_config

CONFIG = parse_config(
    {
        "broker_url": "redis://w:p@127.0.0.1:1/1",
        "result_backend": "redis://w:p@127.0.0.1:1/0",
        "visibility_timeout": 600,
        "result_expires": 1200,
        "default_queue": "main",
        "task_routes": {"stackdemo.tasks.sleep_then_echo": {"queue": "slow"}},
        "add_delay_seconds": 2.5,
    }
)


def test_worker_settings():
    conf = create_worker_app(CONFIG).conf
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.accept_content == conf.result_accept_content == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_track_started is True
    assert conf.broker_connection_retry_on_startup is True
    assert conf.worker_enable_remote_control is False
    assert conf.result_backend == CONFIG.result_backend
    assert conf.result_expires == 1200
    assert conf.task_default_queue == "main"
    assert conf.task_routes == {"stackdemo.tasks.sleep_then_echo": {"queue": "slow"}}
    assert conf.broker_transport_options == {
        "visibility_timeout": 600,
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
    }
    assert conf.result_backend_transport_options == {"visibility_timeout": 600}
    assert "asctime" not in conf.worker_log_format
    assert conf.stackdemo_add_delay_seconds == 2.5


def test_producer_has_no_result_backend():
    app = create_producer_app(CONFIG)
    assert not app.conf.result_backend
    assert isinstance(app.backend, DisabledBackend)
    assert app.conf.accept_content == ["json"]
    assert app.conf.broker_transport_options["sep"] == ":"


def test_celery_app_module_registers_tasks(tmp_path, monkeypatch):
    path = tmp_path / "worker.json"
    path.write_text(
        json.dumps({"broker_url": "redis://h/1", "result_backend": "redis://h/0"})
    )
    monkeypatch.setenv("STACKDEMO_CONFIG", str(path))
    sys.modules.pop("stackdemo.celery_app", None)
    module = importlib.import_module("stackdemo.celery_app")
    module.app.loader.import_default_modules()
    names = set(module.app.tasks)
    assert {"stackdemo.tasks.add", "stackdemo.tasks.sleep_then_echo"} <= names


def test_tasks_run_with_the_configured_delay(monkeypatch):
    app = create_worker_app(CONFIG)
    app.loader.import_default_modules()
    slept = []
    monkeypatch.setattr(tasks.time, "sleep", slept.append)
    add = app.tasks["stackdemo.tasks.add"]
    echo = app.tasks["stackdemo.tasks.sleep_then_echo"]
    assert add(2, 3) == 5
    assert add(1.5, 2) == 3.5
    assert echo({"a": [1]}, 7) == {"a": [1]}
    assert slept == [2.5, 2.5, 7]
    with pytest.raises(TypeError, match="x must be a number"):
        add("2", 3)
    with pytest.raises(TypeError, match="y must be a number"):
        add(2, True)
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        echo("v", -1)
