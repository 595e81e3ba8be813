"""Runs last: the suite needed nothing beyond the deployed ACL grants."""

import socket

import pytest
import redis

from conftest import WEB_USER, WORKER_USER


def test_no_acl_denials_during_the_suite(redis_server, web, worker):
    # Make sure both processes have done real work even if run alone.
    assert web.get("/add?x=1&y=1").json()["result"] == 2
    denials = redis_server.client(0).acl_log()
    assert denials == [], denials


@pytest.mark.parametrize(
    ("user", "command"),
    [
        (WEB_USER, ["KEYS", "*"]),
        (WEB_USER, ["FLUSHALL"]),
        (WEB_USER, ["CONFIG", "GET", "*"]),
        (WEB_USER, ["CLIENT", "LIST"]),
        (WEB_USER, ["SET", "celery-task-meta-forged", "{}"]),
        (WEB_USER, ["DEL", "celery-task-meta-someone-elses"]),
        (WEB_USER, ["HGETALL", "unacked@main@host"]),
        # Read-only for the web's /metrics.
        (WEB_USER, ["LPUSH", "stack@dead-letters", "forged"]),
        (WEB_USER, ["DEL", "stack@dead-letters"]),
        (WEB_USER, ["INCR", "stack@dead-letters-total"]),
        (WEB_USER, ["PUBLISH", "celery-task-meta-x", "{}"]),
        (WEB_USER, ["BRPOP", "celery", "1"]),
        (WORKER_USER, ["KEYS", "*"]),
        (WORKER_USER, ["GET", "some-other-app"]),
        (WORKER_USER, ["SUBSCRIBE", "anything"]),
    ],
)
def test_rules_are_really_enforced(redis_server, user, command):
    client = redis_server.client(0, user)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*command)


def test_default_user_is_off(redis_server):
    # A raw socket: a client library would retry the refused command.
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=10) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(100).startswith(b"-NOAUTH")
