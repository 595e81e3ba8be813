"""Bad input fails early, names the variable, and changes nothing (run in check mode as well)."""

import json
import os
import pathlib
import subprocess

import pytest

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent

# What Flower needs besides the case's own mistake.
FLOWER = {
    "stack_redis_monitor_password": "monitor-password-0123456789",
    "stack_celery_events": True,
    "celery_flower_basic_auth_password": "flower-password-0123456789",
}

CASES = [
    ("celery_flower", {}, "celery_flower_basic_auth_password"),
    ("celery_flower", {**FLOWER, "stack_redis_monitor_password": ""}, "stack_redis_monitor_password"),
    ("celery_flower", {**FLOWER, "stack_redis_sentinel_hosts": ["localhost"]}, "stack_redis_sentinel_hosts"),
    ("celery_flower", {**FLOWER, "stack_celery_events": False}, "stack_celery_events"),
    ("celery_flower", {**FLOWER, "celery_flower_address": "10.0.0.5"}, "celery_flower_allowed_sources"),
    ("celery_flower", {**FLOWER, "celery_flower_address": "flower.example.net"}, "celery_flower_address"),
    ("celery_flower", {**FLOWER, "celery_flower_port": 80}, "celery_flower_port"),
    ("celery_flower", {**FLOWER, "celery_flower_user": "root"}, "celery_flower_user"),
    (
        "celery_flower",
        {**FLOWER, "celery_flower_basic_auth_password": "two,pairs-0123456789"},
        "celery_flower_basic_auth_password",
    ),
    (
        "celery_flower",
        {**FLOWER, "celery_flower_basic_auth_password": "short"},
        "celery_flower_basic_auth_password",
    ),
    ("celery_flower", {**FLOWER, "celery_flower_url_prefix": "a b"}, "celery_flower_url_prefix"),
    ("redis", {"stack_redis_port": 70000}, "stack_redis_port"),
    ("redis", {"stack_redis_port": 0}, "stack_redis_port"),
    ("redis", {"redis_maxmemory_policy": "allkeys-oops"}, "redis_maxmemory_policy"),
    ("redis", {"redis_bind_addresses": ["redis.example.net"]}, "redis_bind_addresses"),
    ("redis", {"redis_bind_addresses": ["0.0.0.0"]}, "redis_bind_addresses"),
    ("redis", {"stack_redis_web_password": "short"}, "stack_redis_web_password"),
    ("redis", {"redis_flavor": "keydb"}, "redis_flavor"),
    ("redis", {"redis_package_state": "newest"}, "redis_package_state"),
    ("redis", {"redis_acl_queues": ["celery", "*"]}, "redis_acl_queues"),
    ("redis", {"stack_redis_web_user": "celery-web ~* +@all"}, "stack_redis_web_user"),
    ("redis", {"stack_redis_worker_user": "stack-admin"}, "must differ"),
    # An extra hash becomes "#HASH" on a user's line of users.acl: anything else would add rules.
    (
        "redis",
        {"redis_acl_extra_password_hashes": {"celery-worker": ["0" * 64 + " ~* +@all"]}},
        "redis_acl_extra_password_hashes",
    ),
    ("redis", {"redis_acl_extra_password_hashes": {"nobody": ["0" * 64]}}, "redis_acl_extra_password_hashes"),
    # One redis host with a Sentinel: nothing to fail over to.
    ("redis", {"stack_redis_sentinel_hosts": ["localhost"]}, "redis_sentinel"),
    ("redis_sentinel", {"redis_sentinel_flavor": "keydb"}, "redis_sentinel_flavor"),
    ("redis_sentinel", {"redis_sentinel_bind_addresses": ["0.0.0.0"]}, "redis_sentinel_bind_addresses"),
    ("redis_sentinel", {"redis_sentinel_announce_ip": "sentinel.example.net"}, "redis_sentinel_announce_ip"),
    ("redis_sentinel", {"redis_sentinel_down_after_ms": 0}, "redis_sentinel_down_after_ms"),
    ("redis_sentinel", {"redis_sentinel_quorum": 1}, "redis_sentinel_quorum"),
    ("celery_worker", {"stack_redis_broker_db": 16}, "stack_redis_broker_db"),
    ("celery_worker", {"stack_celery_default_queue": "cel*"}, "stack_celery_default_queue"),
    ("tornado_web", {"stack_redis_port": 70000}, "stack_redis_port"),
    ("tornado_web", {"stack_celery_visibility_timeout": 0}, "stack_celery_visibility_timeout"),
    ("redis", {"redis_supervision": "upstart"}, "redis_supervision"),
    ("redis", {"redis_appendfsync": "sometimes"}, "redis_appendfsync"),
    (
        "firewall",
        {"firewall_rules": [{"name": "redis", "port": 6379, "sources": ["0.0.0.0/0"]}]},
        "firewall_rules",
    ),
    ("firewall", {"firewall_rules": [{"name": "r", "port": 99999, "sources": ["10.0.0.1"]}]}, "port"),
    ("firewall", {"firewall_backend": "pf"}, "firewall_backend"),
    ("redis_host_tuning", {"redis_host_tuning_extra_sysctls": {"vm.drop_caches": 3}}, "vm.drop_caches"),
    (
        "redis_host_tuning",
        {"redis_host_tuning_extra_sysctls": {"net.ipv4.tcp_tw_recycle": 1}},
        "net.ipv4.tcp_tw_recycle",
    ),
    ("redis_host_tuning", {"redis_host_tuning_somaxconn": 128}, "redis_host_tuning_somaxconn"),
    ("redis_host_tuning", {"redis_host_tuning_transparent_hugepage": "sometimes"}, "transparent_hugepage"),
    (
        "celery_worker",
        {"celery_worker_pools": [{"name": "p", "queues": ["celery"], "pool": "gevent"}]},
        "pool",
    ),
    ("celery_worker", {"celery_worker_loglevel": "LOUD"}, "celery_worker_loglevel"),
    ("tornado_web", {"tornado_web_ports": ["http"]}, "tornado_web_ports"),
    # Accepted once, refused now: each would reach a unit, an ACL rule, a path or a URL.
    ("celery_worker", {"celery_worker_user": "root"}, "celery_worker_user"),
    ("celery_worker", {"celery_worker_user": "celery worker"}, "celery_worker_user"),
    *[
        ("celery_worker", {"celery_worker_pools": [pool]}, f"celery_worker_pools[{pool['name']}]")
        for pool in [
            {"name": "a;b", "queues": ["celery"]},
            {"name": "../x", "queues": ["celery"]},
            {"name": "p", "queues": ["cel*"]},
            {"name": "q", "queues": []},
            {"name": "r", "queues": ["c"], "concurrency": 0},
            {"name": "s", "queues": ["c"], "autoscale": "2,5"},
        ]
    ],
    (
        "celery_worker",
        {"celery_worker_pools": [{"name": "p", "queues": ["c"]}, {"name": "p", "queues": ["d"]}]},
        "celery_worker_pools",
    ),
    ("celery_worker", {"celery_worker_pools": []}, "celery_worker_pools"),
    ("celery_worker", {"celery_worker_task_routes": {"t": {"queue": "a b"}}}, "celery_worker_task_routes"),
    (
        "celery_worker",
        {"celery_worker_beat_schedule": {"x": {"task": "t.add", "every_seconds": 0}}},
        "celery_worker_beat_schedule",
    ),
    ("celery_worker", {"celery_worker_stop_timeout": 0}, "celery_worker_stop_timeout"),
    ("tornado_web", {"tornado_web_ports": [70000]}, "tornado_web_ports"),
    ("tornado_web", {"tornado_web_ports": [80]}, "tornado_web_ports"),
    ("tornado_web", {"tornado_web_ports": [10001, 10001]}, "tornado_web_ports"),
    ("tornado_web", {"tornado_web_user": "root"}, "tornado_web_user"),
    ("tornado_web", {"tornado_web_listen_backlog": -1}, "tornado_web_listen_backlog"),
    ("tornado_web", {"tornado_web_address": "0.0.0.0 --debug"}, "tornado_web_address"),
    ("tornado_web", {"tornado_web_allowed_tasks": ["stackdemo.*"]}, "tornado_web_allowed_tasks"),
    # One Redis server in the validation inventory: no replica to wait for.
    ("tornado_web", {"tornado_web_publish_replica_acks": 1}, "tornado_web_publish_replica_acks"),
    ("redis", {"redis_repl_diskless_sync_delay": -1}, "redis_repl_diskless_sync_delay"),
    ("celery_worker", {"stack_redis_host": "10.0.0.1/0?x=@evil"}, "stack_redis_host"),
    ("stackdemo_app", {"stackdemo_app_prefix": "/opt/stack demo"}, "stackdemo_app_prefix"),
    ("stackdemo_app", {"stackdemo_app_venv": "/opt/stackdemo/../../usr"}, "stackdemo_app_venv"),
    ("stackdemo_app", {"stackdemo_app_config_dir": "/etc"}, "stackdemo_app_config_dir"),
    ("stackdemo_app", {"stackdemo_app_project_source": "/nonexistent/proj"}, "stackdemo_app_project_source"),
    # A directory, but not a Python project.
    ("stackdemo_app", {"stackdemo_app_project_source": str(ROOT / "docs")}, "stackdemo_app_project_source"),
    (
        "stackdemo_app",
        {
            "stackdemo_app_project_source": str(ROOT / "tests" / "example_project"),
            "stackdemo_app_project_lock_file": "/nonexistent/requirements.lock",
        },
        "stackdemo_app_project_lock_file",
    ),
    ("redis", {"stack_redis_monitor_password": "short"}, "stack_redis_monitor_password"),
    ("redis", {"stack_redis_monitor_user": "celery-web"}, "must differ"),
    ("celery_worker", {"celery_worker_app": "myproj.celery"}, "celery_worker_app"),
    ("celery_worker", {"celery_worker_app": "myproj:app; rm -rf /"}, "celery_worker_app"),
    # An app with nothing installed to provide it.
    ("celery_worker", {"celery_worker_app": "myproj.celery:app"}, "celery_worker_app"),
]


CASE_IDS = [f"{role}-{named}-{index}" for index, (role, _, named) in enumerate(CASES)]


@pytest.mark.parametrize(("role", "variables", "named"), CASES, ids=CASE_IDS)
def test_bad_input_fails_before_any_change(role, variables, named):
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
    }
    extra = json.dumps({"role_under_test": role, **variables})
    result = subprocess.run(
        [
            "ansible-playbook",
            "--check",
            "-i",
            str(HERE / "inventory.yml"),
            str(HERE / "roles.yml"),
            "-e",
            extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert named in output
    assert "changed=0" in output
