"""Redis ACL rules the integration tests run under: copy them into the role.

The suite starts redis-server with only these users (the default user is
off) and its last module asserts that ``ACL LOG`` recorded no denial, so
every command, key and channel the web and the worker used is granted here.
Commands were trimmed to those seen with MONITOR over a full run, plus the
few a code path the tests cannot reach needs (marked below).

Redis 6.2 syntax only. Key and channel patterns apply to every database:
ACLs cannot tell the broker db from the result db. HELLO and AUTH need no
grant (redis-py 8 opens every connection with HELLO 3 AUTH ...).
"""

from __future__ import annotations

from collections.abc import Iterable

# Results: key and pub/sub channel "celery-task-meta-<task id>".
RESULT_PATTERN = "celery-task-meta-*"
# kombu records each queue's binding to its direct exchange in both sets when
# a queue is declared; SADD is idempotent so every declare repeats it.
BINDING_PATTERNS = ("~_kombu.binding.*", "~_kombu.binding_permanent.*")
# kombu's bookkeeping of delivered, unacknowledged messages (late acks).
UNACKED_PATTERNS = ("~unacked", "~unacked_index", "~unacked_mutex")

WEB_COMMANDS = (
    "ping",  # /healthz; redis-py health checks of idle kombu connections
    "select",  # the broker and results live in numbered databases
    "lpush",  # publish a task message (queues are not declared by the web)
    "get",  # read a result once after subscribing
    "subscribe",
    "unsubscribe",
)

WORKER_COMMANDS = (
    "ping",
    "select",
    "brpop",  # consume
    "llen",  # queue declare
    "sadd",  # queue binding
    "lpush",  # requeue a rejected message (leftmost)
    "rpush",  # requeue unacknowledged messages at shutdown
    "multi",
    "exec",
    "watch",  # requeueing is an optimistic transaction on "unacked"
    "unwatch",  # only when that transaction is abandoned (not reached by tests)
    "hset",  # remember a delivered message until it is acknowledged
    "hget",
    "hdel",
    "zadd",
    "zrange",  # find messages past the visibility timeout
    "zrevrangebyscore",  # the same in kombu < 5.7 (all Python 3.9 can install)
    "zrem",
    "set",  # the unacked_mutex lock (SET NX PX)
    "evalsha",  # releasing that lock is a Lua script (runs GET and DEL)
    "script|load",
    "del",
    "get",  # also: result meta
    "setex",  # store a result with result_expires
    "publish",  # announce it on the result channel
)


def queue_key_patterns(queues: Iterable[str]) -> list[str]:
    # kombu keeps priority N > 0 of queue Q in the list "Q:N" (sep ":").
    patterns = []
    for queue in sorted(queues):
        patterns += [f"~{queue}", f"~{queue}:*"]
    return patterns


def web_rule(password: str, queues: Iterable[str]) -> str:
    keys = [*queue_key_patterns(queues), f"~{RESULT_PATTERN}"]
    return _rule(password, keys, WEB_COMMANDS)


def worker_rule(password: str, queues: Iterable[str]) -> str:
    keys = [
        *queue_key_patterns(queues),
        *BINDING_PATTERNS,
        *UNACKED_PATTERNS,
        f"~{RESULT_PATTERN}",
    ]
    return _rule(password, keys, WORKER_COMMANDS)


def _rule(password: str, keys: list[str], commands: Iterable[str]) -> str:
    grants = " ".join(f"+{command}" for command in commands)
    return (
        f"on >{password} resetkeys resetchannels {' '.join(keys)} "
        f"&{RESULT_PATTERN} -@all {grants}"
    )


if __name__ == "__main__":
    for user, rule in (
        ("stackdemo-web", web_rule("WEB_PASSWORD", ["celery"])),
        ("stackdemo-worker", worker_rule("WORKER_PASSWORD", ["celery"])),
    ):
        print(f"user {user} {rule}")
