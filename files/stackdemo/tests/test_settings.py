"""Celery settings for the worker and for the web's producer."""

import importlib
import json
import sys

import pytest
from celery.backends.base import DisabledBackend

from stackdemo import tasks
from stackdemo.apps import create_monitor_app, create_producer_app, create_worker_app
from stackdemo.config import ConfigError, parse_config


def _raw() -> dict:
    return {
        "broker_url": "redis://w:p@127.0.0.1:1/1",
        "result_backend": "redis://w:p@127.0.0.1:1/0",
    }


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
    # A result Redis cannot take for a moment is retried, not lost (message acked).
    backend = create_worker_app(CONFIG).backend
    assert backend.always_retry is True and backend.max_retries == 15
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_track_started is True
    assert conf.broker_connection_retry_on_startup is True
    assert conf.worker_enable_remote_control is False
    assert conf.worker_send_task_events is False
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


def test_events_are_sent_only_when_asked_for():
    config = parse_config({**_raw(), "events": True, "remote_control": True})
    conf = create_worker_app(config).conf
    assert conf.worker_send_task_events is True
    assert conf.worker_enable_remote_control is True


def test_the_monitoring_app_reads_no_result_and_never_hangs():
    config = parse_config(
        {"broker_url": "redis://m:p@127.0.0.1:1/1", "monitor": {"queues": ["main"]}}
    )
    app = create_monitor_app(config)
    assert isinstance(app.backend, DisabledBackend)
    assert app.conf.accept_content == ["json"]
    options = app.conf.broker_transport_options
    assert options["sep"] == ":" and options["priority_steps"] == list(range(10))
    assert options["socket_timeout"] == options["socket_connect_timeout"] == 2
    with pytest.raises(ConfigError, match="not a monitoring configuration"):
        create_monitor_app(CONFIG)


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


def test_sentinel_settings():
    config = parse_config(
        {
            "broker_url": "sentinel://w:p@10.0.0.1:26379/1;sentinel://w:p@10.0.0.2/1",
            "result_backend": "sentinel://w:p@10.0.0.1:26379/0;sentinel://w:p@h/0",
            "sentinel": {"master_name": "stack", "username": "c", "password": "s"},
        }
    )
    conf = create_worker_app(config).conf
    assert conf.broker_transport == "stackdemo.broker:SentinelTransport"
    options = conf.broker_transport_options
    assert options["master_name"] == "stack"
    assert options["sentinel_kwargs"]["username"] == "c"
    assert options["sentinel_kwargs"]["password"] == "s"
    assert options["socket_timeout"] == 5
    assert options["health_check_interval"] == 5
    backend = conf.result_backend_transport_options
    assert backend["master_name"] == "stack"
    assert backend["sentinel_kwargs"] == options["sentinel_kwargs"]
    assert conf.redis_socket_timeout == 5
    producer = create_producer_app(config).conf
    assert producer.broker_transport_options["master_name"] == "stack"
    # Plain URLs keep today's transport and options.
    assert create_worker_app(CONFIG).conf.broker_transport == (
        "stackdemo.broker:Transport"
    )


@pytest.mark.parametrize(
    ("create", "transport"),
    [
        (create_worker_app, "SentinelTransport"),
        (create_producer_app, "SentinelProducerTransport"),
    ],
)
def test_a_switch_to_the_next_sentinel_keeps_the_stack_transport(create, transport):
    """kombu's failover to the next URL reads the transport from its scheme again."""
    from test_config import SENTINEL

    app = create(parse_config(SENTINEL))
    connection = app.connection_for_read()
    try:
        assert len(connection.alt) == 3
        for url in connection.alt[1:]:
            connection.switch(url)
            assert type(connection.transport).__name__ == transport
            assert type(connection.transport).__module__ == "stackdemo.broker"
    finally:
        connection.release()


def test_a_project_whose_task_class_was_built_at_import(tmp_path, monkeypatch, caplog):
    """Its tasks keep their class; Celery's own redelivery check covers them."""
    (tmp_path / "earlyproj.py").write_text(
        "from celery import Celery\n"
        "app = Celery('earlyproj')\n"
        "class Base(app.Task):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = parse_config(
        {
            "broker_url": CONFIG.broker_url,
            "result_backend": CONFIG.result_backend,
            "celery_app": "earlyproj:app",
        }
    )
    app = create_worker_app(config)
    assert app.main == "earlyproj"
    assert app.conf.worker_deduplicate_successful_tasks is True
    assert app.conf.task_serializer == "json"
    assert "built its task class at import" in caplog.text
