"""The filters every role shares: URLs, unit hardening lines, ACL rules."""

import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles" / "stack"
sys.path.insert(0, str(ROLE / "filter_plugins"))
import stack_filters as filters  # noqa: E402

GRANTS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["stack_redis_acl_grants"]


def test_url_of_an_ipv4_host():
    assert filters.redis_url("10.0.0.5", 6379, "celery-worker", "s3cret", 1) == (
        "redis://celery-worker:s3cret@10.0.0.5:6379/1"
    )


def test_url_puts_an_ipv6_host_in_brackets():
    url = filters.redis_url("fd00::5", "6380", "u", "p", "0")
    assert url == "redis://u:p@[fd00::5]:6380/0"
    assert urlsplit(url).hostname == "fd00::5"


@pytest.mark.parametrize("password", ["p@ss:word/with?odd#chars%", "ünïcode pass", "a+b=c&d"])
def test_credentials_survive_a_round_trip_through_the_url(password):
    parts = urlsplit(filters.redis_url("redis.example.net", 6379, "us:er@x", password, 2))
    assert (unquote(parts.username), unquote(parts.password)) == ("us:er@x", password)
    assert (parts.hostname, parts.port, parts.path) == ("redis.example.net", 6379, "/2")


def test_urls_of_several_sentinels_in_celerys_syntax():
    urls = filters.redis_url(["10.0.0.1", "fd00::2"], 26379, "celery-web", "p;w", 1, "sentinel")
    first, second = urls.split(";")
    assert first == "sentinel://celery-web:p%3Bw@10.0.0.1:26379/1"
    assert second == "sentinel://celery-web:p%3Bw@[fd00::2]:26379/1"


def test_url_refuses_an_empty_list_of_hosts():
    with pytest.raises(ValueError, match="empty"):
        filters.redis_url([], 26379, "u", "p", 0, "sentinel")


def test_url_without_credentials():
    assert filters.redis_url("127.0.0.1", 6379, "", "", 0) == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("h", 0, "u", "p", 0), "port"),
        (("h", 70000, "u", "p", 0), "port"),
        (("h", 6379, "u", "p", -1), "database"),
        (("", 6379, "u", "p", 0), "host"),
    ],
)
def test_url_refuses_impossible_values(args, message):
    with pytest.raises(ValueError, match=message):
        filters.redis_url(*args)


def test_url_refuses_an_unknown_scheme():
    with pytest.raises(ValueError, match="scheme"):
        filters.redis_url("h", 6379, "u", "p", 0, scheme="http")


def test_directives_render_booleans_lists_and_removals():
    lines = filters.systemd_directives(
        {
            "NoNewPrivileges": True,
            "PrivateTmp": False,
            "CapabilityBoundingSet": "",
            "MemoryDenyWriteExecute": None,
            "SystemCallFilter": ["@system-service", "~@privileged"],
            "UMask": "0077",
        }
    ).splitlines()
    assert lines == [
        "NoNewPrivileges=yes",
        "PrivateTmp=no",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged",
        "UMask=0077",
    ]


def test_shared_hardening_renders_every_directive_once():
    hardening = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["stack_systemd_hardening"]
    lines = filters.systemd_directives(hardening).splitlines()
    keys = [line.split("=", 1)[0] for line in lines]
    assert len(keys) == len(set(keys)) == len(hardening)
    assert "NoNewPrivileges=yes" in lines and "ProtectSystem=strict" in lines


def test_acl_rule_starts_from_nothing_and_grants_exactly_the_tier():
    rule = filters.redis_acl_rule(GRANTS["web"], ["urgent", "celery"]).split()
    assert rule[:2] == ["resetkeys", "resetchannels"]
    assert rule.index("-@all") < min(i for i, token in enumerate(rule) if token.startswith("+"))
    assert [t for t in rule if t.startswith("~")] == [
        "~celery",
        "~celery:*",
        "~urgent",
        "~urgent:*",
        "~celery-taskset-meta-*",
    ]
    assert [t for t in rule if t.startswith("%R~")] == [
        "%R~celery-task-meta-*",
        "%R~stack@dead-letters",
        "%R~stack@dead-letters-total",
    ]
    assert [t for t in rule if t.startswith("+")] == [f"+{c}" for c in GRANTS["web"]["commands"]]


def test_acl_rule_never_grants_every_key_or_command():
    for tier, grant in GRANTS.items():
        rule = filters.redis_acl_rule(grant, ["celery"]).split()
        assert "~*" not in rule and "+@all" not in rule and "allkeys" not in rule, tier


def test_only_the_worker_consumes_and_only_the_web_subscribes():
    for command in ("evalsha", "blmove", "lmove"):
        assert command in GRANTS["worker"]["commands"] and command not in GRANTS["web"]["commands"]
    assert "subscribe" in GRANTS["web"]["commands"] and "subscribe" not in GRANTS["worker"]["commands"]


def test_pidbox_channels_are_named_after_the_broker_database():
    # Redis matches a PSUBSCRIBE pattern against the ACL's channels literally: "/1.celery.pidbox".
    rule = filters.redis_acl_rule(GRANTS["worker_remote_control"], [], db=3).split()
    assert [t for t in rule if t.startswith("&")] == ["&/3.celery.pidbox"]
    rule = filters.redis_acl_rule(GRANTS["monitor"], [], db=3).split()
    assert [t for t in rule if t.startswith("&")] == ["&/3.celery.pidbox", "&/3.celeryev/*"]
    rule = filters.redis_acl_rule(GRANTS["worker_events"], [], db=3).split()
    assert [t for t in rule if t.startswith("&")] == ["&/3.celeryev/*"]


def test_the_monitor_can_neither_consume_nor_read_results_nor_control():
    monitor = GRANTS["monitor"]
    for command in ("blmove", "lmove", "rpush", "lpush", "hset", "setex", "subscribe"):
        assert command not in monitor["commands"], command
    keys = " ".join(monitor["keys"])
    for secret in ("celery-task-meta", "unacked@", "inflight@", "stack@dead-letters"):
        assert secret not in keys, secret
    assert "queue_keys" not in monitor
    # It counts the queues' messages, read only: no pop, no read of a message.
    rule = filters.redis_acl_rule(monitor, ["celery"]).split()
    assert "%R~celery" in rule and "%R~celery:*" in rule
    assert "~celery" not in rule and "+lrange" not in rule and "+lindex" not in rule


def test_a_grant_with_extras_appends_their_lists_and_keeps_the_rest():
    worker = GRANTS["worker"]
    grant = filters.redis_acl_grant_with(worker, GRANTS["worker_remote_control"], {}, GRANTS["worker_events"])
    assert grant["commands"] == worker["commands"] + GRANTS["worker_remote_control"]["commands"]
    assert grant["channels"] == worker["channels"] + ["/{db}.celery.pidbox", "/{db}.celeryev/*"]
    assert grant["queue_keys"] is True and filters.redis_acl_grant_with(worker) == worker
