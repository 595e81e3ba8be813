"""Redis as a broker: configuration read back from the live server, ACL users, unit hardening."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from stackcheck import redis_cli, redis_endpoint

# What a container cannot fix: the kernel is its host's (proven on a VM by molecule/kernel).
KERNEL_WARNINGS = ("overcommit", "transparent huge pages", "somaxconn", "tcp_max_syn_backlog")


def config_get(redis_host, worker_config, admin, name):
    result = redis_cli(
        redis_host, worker_config["broker_url"], "CONFIG", "GET", name, user=admin[0], password=admin[1]
    )
    lines = result.stdout.splitlines()
    assert lines[0] == name, result.stdout + result.stderr
    return lines[1] if len(lines) > 1 else ""


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("maxmemory-policy", "noeviction"),
        ("protected-mode", "yes"),
        ("save", ""),
        ("tcp-backlog", "511"),
        ("maxclients", "10000"),
        ("databases", "16"),
    ],
)
def test_broker_grade_settings_are_live(redis_host, worker_config, admin, name, expected):
    assert config_get(redis_host, worker_config, admin, name) == expected


def test_maxmemory_is_set(redis_host, worker_config, admin):
    assert int(config_get(redis_host, worker_config, admin, "maxmemory")) >= 64 * 1024 * 1024


def test_bind_is_loopback_and_the_service_address(redis_host, worker_config, admin):
    address = redis_endpoint(worker_config["broker_url"])[0]
    assert set(config_get(redis_host, worker_config, admin, "bind").split()) == {"127.0.0.1", address}


def test_acl_users_are_least_privilege(redis_host, worker_config, admin, redis_fact):
    listed = redis_cli(
        redis_host, worker_config["broker_url"], "ACL", "LIST", user=admin[0], password=admin[1]
    )
    users = {line.split()[1]: line for line in listed.stdout.splitlines()}
    tiers = redis_fact["users"]
    # Replicated: the replicas' and the Sentinels' users too, with no key at all.
    assert set(users) == {"default", *tiers.values()}
    assert " off " in users["default"]
    for role, name in tiers.items():
        if role == "admin":
            continue
        assert "+@all" not in users[name]
        assert "~*" not in users[name].split()
        assert "#" in users[name]  # a password hash, never a plaintext password
        if role in ("replication", "sentinel"):
            assert not [token for token in users[name].split() if token.startswith(("~", "%"))], name


def _grants():
    role = Path(__file__).resolve().parents[2] / "roles" / "stack"
    sys.path.insert(0, str(role / "filter_plugins"))
    import stack_filters

    return stack_filters, yaml.safe_load((role / "vars" / "main.yml").read_text())["stack_redis_acl_grants"]


def _effective_commands(tokens, category_members):
    """The command set a rule's +/- tokens grant, in order; Redis prints +@category -command."""
    granted = set()
    for token in tokens:
        if token[0] not in "+-":
            continue
        names = category_members(token[2:]) if token[1] == "@" else {token[1:]}
        granted = granted | names if token[0] == "+" else granted - names
    return granted


def test_live_acl_rules_are_the_shared_grants(
    redis_host, worker_config, admin, redis_fact, inventory, worker_hosts
):
    filters, grants = _grants()
    pools = inventory.get_variables(inventory.get_hosts("celery_workers")[0])["celery_worker_pools"]
    queues = {queue for pool in pools for queue in pool["queues"]} | {worker_config["default_queue"]}

    def as_admin(*command):
        return redis_cli(redis_host, worker_config["broker_url"], *command, user=admin[0], password=admin[1])

    def category_members(name):
        listed = (
            as_admin("COMMAND", "LIST")
            if name == "all"
            else as_admin("COMMAND", "LIST", "FILTERBY", "ACLCAT", name)
        )
        return set(listed.stdout.split())

    # As the redis role composes them: the worker's grant gains remote control with a monitoring
    # user, and publishing events when the workers send them.
    worker_settings = json.loads(worker_hosts[0].file("/etc/stackdemo/worker.json").content_string)
    grants["worker"] = filters.redis_acl_grant_with(
        grants["worker"],
        grants["worker_remote_control"] if "monitor" in redis_fact["users"] else {},
        grants["worker_events"] if worker_settings.get("events", False) else {},
    )
    listed = as_admin("ACL", "LIST").stdout.splitlines()
    for tier in [name for name in ("worker", "web", "monitor") if name in redis_fact["users"]]:
        live = next(line for line in listed if line.split()[1] == redis_fact["users"][tier]).split()
        grant = grants[tier]
        if redis_fact["flavor"] == "valkey":
            # redis-py names each connection (CLIENT SETINFO), which Redis 7.0 does not know.
            grant = {**grant, "commands": [*grant["commands"], "client|setinfo"]}
        expected = filters.redis_acl_rule(grant, sorted(queues)).split()
        for prefix in ("~", "%", "&"):
            granted = {t for t in expected if t.startswith(prefix)}
            assert {t for t in live if t.startswith(prefix)} == granted, (tier, prefix)
        assert _effective_commands(live, category_members) == _effective_commands(
            expected, category_members
        ), tier


def test_web_user_is_refused_on_worker_only_keys(web_hosts, web_config):
    for command in (
        ("HGETALL", "unacked@default@host"),
        ("LRANGE", "inflight@default@host@celery", "0", "-1"),
        ("LPUSH", "stack@dead-letters", "forged"),
        ("FLUSHDB",),
        ("CONFIG", "GET", "*"),
        ("KEYS", "*"),
    ):
        result = redis_cli(web_hosts[0], web_config["broker_url"], *command)
        assert "NOPERM" in result.stdout + result.stderr, command


def test_worker_user_cannot_administer(worker_hosts, worker_config):
    for command in (("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("ACL", "LIST"), ("SHUTDOWN",)):
        result = redis_cli(worker_hosts[0], worker_config["broker_url"], *command)
        assert "NOPERM" in result.stdout + result.stderr, command


def test_wrong_password_is_refused(worker_hosts, worker_config):
    result = redis_cli(
        worker_hosts[0], worker_config["broker_url"], "PING", user="celery-worker", password="x" * 32
    )
    assert "WRONGPASS" in result.stdout + result.stderr


def test_append_only_file_is_on_disk(redis_host, redis_fact):
    assert redis_host.file(f"{redis_fact['data_dir']}/appendonlydir").is_directory


def test_log_has_no_startup_warnings_but_kernel_ones(redis_host, redis_unit, redis_fact):
    log = redis_host.check_output(
        f"journalctl -u {redis_unit} -b --no-pager -o cat;"
        f" cat {redis_fact['log_dir']}/{redis_unit}.log 2>/dev/null || true"
    )
    warnings = [line for line in log.splitlines() if "# WARNING" in line or "# Warning" in line]
    unexpected = [w for w in warnings if not any(k in w for k in KERNEL_WARNINGS)]
    assert not unexpected
    # A command the AOF replay refused is data silently dropped at start.
    assert "AOF-loading-client" not in log


@pytest.mark.parametrize(
    ("prop", "expected"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LimitNOFILE", "10032"),
        ("OOMScoreAdjust", "-900"),
    ],
)
def test_unit_is_hardened(redis_host, redis_unit, prop, expected):
    assert redis_host.check_output(f"systemctl show -p {prop} --value {redis_unit}") == expected


def test_unit_runs_as_the_server_user(redis_host, redis_unit, redis_fact):
    # The package's user (redis, or valkey), which owns the data and log directories.
    assert redis_host.check_output(f"systemctl show -p User --value {redis_unit}") == redis_fact["user"]
    assert redis_fact["user"] not in ("", "root")
    for directory in (redis_fact["data_dir"], redis_fact["log_dir"]):
        assert redis_host.file(directory).user == redis_fact["user"], directory
