"""The configuration file contract with the Ansible roles."""

import json

import pytest

from stackdemo.config import (
    DEFAULT_PATH,
    ConfigError,
    WebConfig,
    load_config,
    parse_config,
)

# The example from the role's documentation, as to_nice_json renders it.
EXAMPLE = {
    "broker_url": "redis://user:pass@10.0.0.5:6379/1",
    "result_backend": "redis://user:pass@10.0.0.5:6379/0",
    "visibility_timeout": 3600,
    "result_expires": 86400,
    "default_queue": "celery",
    "task_routes": {"stackdemo.tasks.add": {"queue": "celery"}},
    "add_delay_seconds": 0,
    "web": {
        "allowed_tasks": ["stackdemo.tasks.add"],
        "max_wait_seconds": 30,
        "max_body_bytes": 65536,
        "max_eta_past_seconds": 60,
    },
}
MINIMAL = {"broker_url": "redis://h/1", "result_backend": "rediss://h:6380/0"}


def test_example_file_loads(tmp_path, monkeypatch):
    path = tmp_path / "stackdemo.json"
    path.write_text(json.dumps(EXAMPLE, indent=4, sort_keys=True))
    monkeypatch.setenv("STACKDEMO_CONFIG", str(path))
    config = load_config()
    assert config.broker_url == EXAMPLE["broker_url"]
    assert config.task_routes == {"stackdemo.tasks.add": {"queue": "celery"}}
    assert config.web.allowed_tasks == ("stackdemo.tasks.add",)
    assert config.queues == {"celery"}


def test_missing_optional_keys_take_defaults():
    config = parse_config(MINIMAL)
    assert config.visibility_timeout == 3600
    assert config.result_expires == 86400
    assert config.default_queue == "celery"
    assert config.task_routes == {}
    assert config.add_delay_seconds == 0
    assert config.web == WebConfig()
    partial = parse_config({**MINIMAL, "web": {"max_wait_seconds": 5}})
    assert partial.web.max_body_bytes == 65536
    assert config.celery_app == "" and config.remote_control is False


def test_what_the_roles_write_for_the_demo_without_monitoring():
    config = parse_config({**MINIMAL, "celery_app": "", "remote_control": False})
    assert config.celery_app == "" and config.remote_control is False


def test_unknown_keys_are_named_with_a_hint():
    with pytest.raises(ConfigError, match=r"'visibilty_timeout' \(did you mean"):
        parse_config({**MINIMAL, "visibilty_timeout": 10})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in web: 'extra'"):
        parse_config({**MINIMAL, "web": {"extra": 1}})
    with pytest.raises(ConfigError, match=r"task_routes\['a.b'\]: 'exchange'"):
        routes = {"a.b": {"queue": "q", "exchange": "x"}}
        parse_config({**MINIMAL, "task_routes": routes})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"broker_url": None}, "broker_url must be a string"),
        ({"broker_url": "amqp://h//"}, "broker_url must be a redis://"),
        ({"result_backend": "redis://h/db"}, "numeric database"),
        ({"visibility_timeout": "3600"}, "visibility_timeout must be an integer"),
        ({"visibility_timeout": True}, "visibility_timeout must be an integer"),
        ({"result_expires": 0}, "result_expires must be an integer >= 1"),
        ({"default_queue": "a:b"}, "default_queue must be a queue name"),
        ({"default_queue": ""}, "default_queue must be a queue name"),
        ({"task_routes": []}, "task_routes must be a JSON object"),
        ({"task_routes": {"t": {}}}, "needs a 'queue'"),
        ({"add_delay_seconds": -1}, "add_delay_seconds must be a number >= 0"),
        ({"web": []}, "web must be a JSON object"),
        ({"web": {"allowed_tasks": "add"}}, "allowed_tasks must be a list"),
        ({"web": {"allowed_tasks": ["no spaces"]}}, "dotted task names"),
        ({"web": {"max_wait_seconds": 0}}, "max_wait_seconds must be a number > 0"),
        ({"web": {"max_body_bytes": 1.5}}, "max_body_bytes must be an integer"),
        ({"web": {"publish_replica_acks": -1}}, "publish_replica_acks must be an int"),
        (
            {"web": {"publish_replica_ack_timeout_ms": 0}},
            "publish_replica_ack_timeout_ms must be an integer >= 1",
        ),
        ({"web": {"publish_replica_acks": 1}}, "publish_replica_acks needs sentinel"),
        ({"celery_app": "myproj.celery"}, "celery_app must name a Celery app as"),
        ({"remote_control": "yes"}, "remote_control must be true or false"),
        ({"events": 1}, "events must be true or false"),
        ({"monitor": {"queues": "celery"}}, "monitor.queues must be a list"),
        ({"monitor": {"queues": ["a:b"]}}, "monitor.queues must be a queue name"),
        ({"monitor": {"flower": {}}}, r"unknown key\(s\) in monitor: 'flower'"),
        ({"celery_app": "my proj:app"}, "celery_app must name a Celery app as"),
        ({"celery_app": ["myproj:app"]}, "celery_app must name a Celery app as"),
    ],
)
def test_invalid_values_are_explained(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**MINIMAL, **change})


def test_required_keys():
    with pytest.raises(ConfigError, match="missing required key 'result_backend'"):
        parse_config({"broker_url": "redis://h/1"})
    with pytest.raises(ConfigError, match="top level must be a JSON object"):
        parse_config([])


def test_the_monitoring_tools_file_has_no_result_backend():
    config = parse_config(
        {"broker_url": "redis://m:pw@h/1", "monitor": {"queues": ["celery", "b"]}}
    )
    assert config.monitor.queues == ("celery", "b") and config.result_backend == ""
    assert (
        parse_config(MINIMAL).monitor is None and parse_config(MINIMAL).events is False
    )


def test_passwords_are_not_echoed():
    with pytest.raises(ConfigError) as info:
        parse_config({**MINIMAL, "broker_url": "http://user:hunter2@h/1"})
    assert "hunter2" not in str(info.value)


def test_file_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("STACKDEMO_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="STACKDEMO_CONFIG") as info:
        load_config(tmp_path / "missing.json")
    assert "missing.json" in str(info.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json: not valid JSON"):
        load_config(bad)


def test_default_path_when_env_unset(monkeypatch):
    monkeypatch.delenv("STACKDEMO_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=DEFAULT_PATH):
        load_config()


SENTINEL_URLS = ";".join(
    f"sentinel://celery-worker:PW@10.89.22.{host}:26379/{{db}}" for host in (11, 14, 15)
)
SENTINEL = {
    "broker_url": SENTINEL_URLS.format(db=1),
    "result_backend": SENTINEL_URLS.format(db=0),
    "sentinel": {
        "master_name": "stack",
        "username": "stack-sentinel-client",
        "password": "sentinel-secret",
    },
}


def test_sentinel_urls_with_the_sentinel_object():
    config = parse_config(SENTINEL)
    assert config.broker_url == SENTINEL["broker_url"]
    assert config.sentinel.master_name == "stack"
    assert config.sentinel.username == "stack-sentinel-client"
    assert "sentinel-secret" not in repr(config.sentinel)
    assert parse_config(MINIMAL).sentinel is None
    waits = parse_config({**SENTINEL, "web": {"publish_replica_acks": 1}}).web
    assert waits.publish_replica_acks == 1
    assert waits.publish_replica_ack_timeout_ms == 1000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sentinel": None}, "need the 'sentinel' object"),
        (
            {"broker_url": "redis://celery-worker:PW@h/1"},
            "must use the same scheme",
        ),
        (
            {"broker_url": "redis://u:PW@h/1", "result_backend": "redis://u:PW@h/0"},
            "only allowed with sentinel:// broker_url",
        ),
        ({"sentinel": {"master_name": "bad name!"}}, "master_name must be a name"),
        ({"sentinel": {}}, "needs 'master_name'"),
        ({"sentinel": {"master_name": "s", "port": 1}}, "unknown key"),
        ({"sentinel": {"master_name": "s", "username": "u"}}, "needs sentinel.pass"),
        ({"sentinel": {"master_name": "s", "password": 7}}, "must be a non-empty"),
        (
            {"broker_url": SENTINEL_URLS.format(db=1) + ";sentinel://x:PW@h:1/2"},
            "differs from the first",
        ),
        (
            {"broker_url": SENTINEL_URLS.format(db=1) + ";redis://celery-worker:PW@h"},
            "must be a sentinel:// URL",
        ),
        ({"broker_url": "sentinel://celery-worker:PW@h:port/1"}, "not a valid URL"),
        ({"broker_url": "sentinel://celery-worker:PW@h/x"}, "numeric database"),
    ],
)
def test_sentinel_mistakes_never_echo_secrets(change, message):
    data = {**SENTINEL, **change}
    if data["sentinel"] is None:
        del data["sentinel"]
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(data)
    assert "PW" not in str(caught.value)
    assert "sentinel-secret" not in str(caught.value)
