"""The one JSON file each process reads; its schema is a contract with the roles."""

import difflib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

ENV_VAR = "STACKDEMO_CONFIG"
DEFAULT_PATH = "/etc/stackdemo/stackdemo.json"

# kombu names the Redis list of priority N "<queue><sep><N>"; a printable
# separator lets the roles grant those lists with ACL patterns like ~celery:*
PRIORITY_SEP = ":"
# kombu's priority levels on Redis, one list each: 0 is the queue's own list.
PRIORITY_STEPS = tuple(range(10))


def priority_lists(queue: str) -> list[str]:
    """The Redis lists of a queue, as kombu names them (Channel._q_for_pri)."""
    return [
        queue if not step else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS
    ]


# No PRIORITY_SEP in queue names, or one queue's lists could be another's.
_QUEUE_RE = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_TASK_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_APP_RE = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
)
_MASTER_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")
# Celery's and kombu's separator between the URLs of several Sentinels.
SENTINEL_URL_SEP = ";"


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or does not match the schema."""


@dataclass(frozen=True)
class WebConfig:
    allowed_tasks: tuple[str, ...] = ("stackdemo.tasks.add",)
    max_wait_seconds: float = 30
    max_body_bytes: int = 65536
    max_eta_past_seconds: float = 60
    # A task is accepted (202) only once this many replicas hold its message
    # (WAIT after the LPUSH): a primary lost right after acknowledging it
    # cannot take it along. 0 with a single Redis server.
    publish_replica_acks: int = 0
    publish_replica_ack_timeout_ms: int = 1000


@dataclass(frozen=True)
class BeatEntry:
    """One periodic task sent by celery beat."""

    task: str
    every_seconds: float
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SentinelConfig:
    """The Sentinels' own side: which master to ask for, and their ACL user.

    The user and password inside each sentinel:// URL are the data nodes' ACL
    user (the tier's); these are the credentials of the Sentinels themselves.
    """

    master_name: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class MonitorConfig:
    """The monitoring tools' side (Flower): the queues whose depth they report."""

    queues: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    broker_url: str
    # Empty only in the monitoring tools' file: they read no results.
    result_backend: str = ""
    visibility_timeout: int = 3600
    result_expires: int = 86400
    default_queue: str = "celery"
    task_routes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    add_delay_seconds: float = 0
    beat_schedule: Mapping[str, BeatEntry] = field(default_factory=dict)
    # The worker's Celery app, "package.module:attribute" (Celery's -A
    # syntax); empty: the demo's tasks.
    celery_app: str = ""
    # Answer `celery inspect` (read-only commands) through Redis's pidbox.
    remote_control: bool = False
    # Send task events and heartbeats for Flower and `celery events`.
    events: bool = False
    monitor: MonitorConfig | None = None
    web: WebConfig = field(default_factory=WebConfig)
    sentinel: SentinelConfig | None = None

    @property
    def queues(self) -> frozenset[str]:
        """Every queue a message may be routed to under this configuration."""
        routed = {route["queue"] for route in self.task_routes.values()}
        return frozenset({self.default_queue, *routed})


_TOP_KEYS = (
    "broker_url",
    "result_backend",
    "visibility_timeout",
    "result_expires",
    "default_queue",
    "task_routes",
    "add_delay_seconds",
    "beat_schedule",
    "celery_app",
    "remote_control",
    "events",
    "monitor",
    "web",
    "sentinel",
)
# The Redis URLs of a file; the monitoring tools' has no result_backend.
_URL_KEYS = ("broker_url", "result_backend")
_SENTINEL_KEYS = ("master_name", "username", "password")
_WEB_KEYS = (
    "allowed_tasks",
    "max_wait_seconds",
    "max_body_bytes",
    "max_eta_past_seconds",
    "publish_replica_acks",
    "publish_replica_ack_timeout_ms",
)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the file named by ``path``, else ``$STACKDEMO_CONFIG``, else the default."""
    if path is None:
        path = os.environ.get(ENV_VAR) or DEFAULT_PATH
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(
            f"cannot read configuration file {path} ({exc.strerror}); "
            f"set {ENV_VAR} to the file to use"
        ) from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    return parse_config(data, source=path)


def parse_config(data: Any, source: str = "configuration") -> Config:
    try:
        return _parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse(data: Any) -> Config:
    _require_object(data, "the top level")
    _reject_unknown(data, _TOP_KEYS, "the top level")
    # The monitoring tools' file has no result backend: they read no results.
    required = _URL_KEYS[:1] if "monitor" in data else _URL_KEYS
    for key in required:
        if key not in data:
            raise ConfigError(f"missing required key {key!r}")
    kwargs: dict[str, Any] = {
        key: _redis_url(data[key], key) for key in _URL_KEYS if key in data
    }
    if "visibility_timeout" in data:
        kwargs["visibility_timeout"] = _integer(
            data["visibility_timeout"], "visibility_timeout", minimum=1
        )
    if "result_expires" in data:
        kwargs["result_expires"] = _integer(
            data["result_expires"], "result_expires", minimum=1
        )
    if "default_queue" in data:
        kwargs["default_queue"] = _queue(data["default_queue"], "default_queue")
    if "task_routes" in data:
        kwargs["task_routes"] = _routes(data["task_routes"])
    if "add_delay_seconds" in data:
        kwargs["add_delay_seconds"] = _number(
            data["add_delay_seconds"], "add_delay_seconds", minimum=0
        )
    if "beat_schedule" in data:
        kwargs["beat_schedule"] = _beat_schedule(data["beat_schedule"])
    if "celery_app" in data:
        kwargs["celery_app"] = _app_reference(data["celery_app"], "celery_app")
    for key in ("remote_control", "events"):
        if key in data:
            if not isinstance(data[key], bool):
                raise ConfigError(
                    f"{key} must be true or false, got {_kind(data[key])}"
                )
            kwargs[key] = data[key]
    if "monitor" in data:
        kwargs["monitor"] = _monitor(data["monitor"])
    if "web" in data:
        kwargs["web"] = _web(data["web"])
    schemes = {_scheme(kwargs[key]) for key in _URL_KEYS if key in kwargs}
    if len(schemes) > 1:
        raise ConfigError(
            "broker_url and result_backend must use the same scheme "
            "(both sentinel:// or both redis:// / rediss://)"
        )
    uses_sentinel = schemes == {"sentinel"}
    if "sentinel" in data:
        if not uses_sentinel:
            raise ConfigError(
                "'sentinel' is only allowed with sentinel:// broker_url and "
                "result_backend"
            )
        kwargs["sentinel"] = _sentinel(data["sentinel"])
    elif uses_sentinel:
        raise ConfigError("sentinel:// URLs need the 'sentinel' object (master_name)")
    web = kwargs.get("web")
    if web is not None and web.publish_replica_acks and not uses_sentinel:
        # Replicas exist only in a tier the Sentinels manage: with one server
        # every publish would wait out the timeout and be refused.
        raise ConfigError("web.publish_replica_acks needs sentinel:// URLs")
    return Config(**kwargs)


def _scheme(url: str) -> str:
    scheme = urlsplit(url.split(SENTINEL_URL_SEP, 1)[0]).scheme
    return "redis" if scheme == "rediss" else scheme


def _sentinel(data: Any) -> SentinelConfig:
    _require_object(data, "sentinel")
    _reject_unknown(data, _SENTINEL_KEYS, "sentinel")
    if "master_name" not in data:
        raise ConfigError("sentinel needs 'master_name'")
    name = data["master_name"]
    if not isinstance(name, str) or not _MASTER_NAME_RE.fullmatch(name):
        raise ConfigError(
            "sentinel.master_name must be a name of letters, digits, '_', '.' or '-'"
        )
    kwargs: dict[str, Any] = {"master_name": name}
    for key in ("username", "password"):
        if key in data:
            value = data[key]
            # Never echo the value: one of them is a password.
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"sentinel.{key} must be a non-empty string, got {_kind(value)}"
                )
            kwargs[key] = value
    if "username" in kwargs and "password" not in kwargs:
        raise ConfigError("sentinel.username needs sentinel.password")
    return SentinelConfig(**kwargs)


def _beat_schedule(data: Any) -> dict[str, BeatEntry]:
    _require_object(data, "beat_schedule")
    schedule = {}
    for name, entry in data.items():
        where = f"beat_schedule[{name!r}]"
        _require_object(entry, where)
        _reject_unknown(entry, ("task", "every_seconds", "args", "kwargs"), where)
        for key in ("task", "every_seconds"):
            if key not in entry:
                raise ConfigError(f"{where} needs {key!r}")
        args = entry.get("args", [])
        if not isinstance(args, list):
            raise ConfigError(f"{where}.args must be a list, got {_kind(args)}")
        kwargs = entry.get("kwargs", {})
        _require_object(kwargs, f"{where}.kwargs")
        schedule[name] = BeatEntry(
            task=_task_name(entry["task"], f"{where}.task"),
            every_seconds=_number(
                entry["every_seconds"],
                f"{where}.every_seconds",
                minimum=0,
                exclusive=True,
            ),
            args=tuple(args),
            kwargs=dict(kwargs),
        )
    return schedule


def _monitor(data: Any) -> MonitorConfig:
    _require_object(data, "monitor")
    _reject_unknown(data, ("queues",), "monitor")
    queues = data.get("queues", [])
    if not isinstance(queues, list):
        raise ConfigError(f"monitor.queues must be a list, got {_kind(queues)}")
    return MonitorConfig(
        queues=tuple(_queue(queue, "monitor.queues") for queue in queues)
    )


def _web(data: Any) -> WebConfig:
    _require_object(data, "web")
    _reject_unknown(data, _WEB_KEYS, "web")
    kwargs: dict[str, Any] = {}
    if "allowed_tasks" in data:
        tasks = data["allowed_tasks"]
        if not isinstance(tasks, list):
            raise ConfigError("web.allowed_tasks must be a list of task names")
        for name in tasks:
            _task_name(name, "web.allowed_tasks")
        kwargs["allowed_tasks"] = tuple(tasks)
    if "max_wait_seconds" in data:
        kwargs["max_wait_seconds"] = _number(
            data["max_wait_seconds"], "web.max_wait_seconds", minimum=0, exclusive=True
        )
    if "max_body_bytes" in data:
        kwargs["max_body_bytes"] = _integer(
            data["max_body_bytes"], "web.max_body_bytes", minimum=1
        )
    if "max_eta_past_seconds" in data:
        kwargs["max_eta_past_seconds"] = _number(
            data["max_eta_past_seconds"], "web.max_eta_past_seconds", minimum=0
        )
    if "publish_replica_acks" in data:
        kwargs["publish_replica_acks"] = _integer(
            data["publish_replica_acks"], "web.publish_replica_acks", minimum=0
        )
    if "publish_replica_ack_timeout_ms" in data:
        kwargs["publish_replica_ack_timeout_ms"] = _integer(
            data["publish_replica_ack_timeout_ms"],
            "web.publish_replica_ack_timeout_ms",
            minimum=1,
        )
    return WebConfig(**kwargs)


def _routes(data: Any) -> dict[str, dict[str, str]]:
    _require_object(data, "task_routes")
    routes = {}
    for pattern, route in data.items():
        where = f"task_routes[{pattern!r}]"
        if not pattern:
            raise ConfigError("task_routes keys must be non-empty task names")
        _require_object(route, where)
        _reject_unknown(route, ("queue",), where)
        if "queue" not in route:
            raise ConfigError(f"{where} needs a 'queue'")
        routes[pattern] = {"queue": _queue(route["queue"], f"{where}.queue")}
    return routes


def _require_object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object, got {_kind(value)}")


def _reject_unknown(
    data: Mapping[str, Any], allowed: tuple[str, ...], where: str
) -> None:
    unknown = sorted(set(data) - set(allowed))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, allowed, n=1)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    raise ConfigError(
        f"unknown key(s) in {where}: {', '.join(hints)}; "
        f"allowed keys: {', '.join(allowed)}"
    )


def _redis_url(value: Any, key: str) -> str:
    # Never echo the value: these URLs carry the Redis ACL password.
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {_kind(value)}")
    if value.startswith("sentinel://"):
        _sentinel_urls(value, key)
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(
            f"{key} must be a redis:// or rediss:// URL with a host, or "
            f"sentinel:// URLs separated by {SENTINEL_URL_SEP!r}"
        )
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ConfigError(f"{key} must end in a numeric database, like /0")
    return value


def _sentinel_urls(value: str, key: str) -> None:
    """sentinel://user:password@host:port/db;sentinel://...: one per Sentinel."""
    seen = set()
    for index, chunk in enumerate(value.split(SENTINEL_URL_SEP), 1):
        where = f"{key} (sentinel URL #{index})"
        try:
            parts = urlsplit(chunk)
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            raise ConfigError(f"{where} is not a valid URL") from None
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ConfigError(f"{where} must be a sentinel:// URL with a host")
        if parts.query or parts.fragment:
            raise ConfigError(f"{where} must not have a query or fragment")
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ConfigError(f"{where} must end in a numeric database, like /0")
        # Every URL must name the same data-node user and database: Celery and
        # kombu take them from the first and would silently ignore the others.
        seen.add((parts.username, parts.password, db or "0"))
        if len(seen) > 1:
            raise ConfigError(
                f"{where} differs from the first in its user, password or database"
            )


def _queue(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _QUEUE_RE.fullmatch(value):
        raise ConfigError(
            f"{key} must be a queue name of letters, digits, '_', '.' or '-' "
            f"(no {PRIORITY_SEP!r}), got {value!r}"
        )
    return value


def _app_reference(value: Any, key: str) -> str:
    # Empty: the demo's tasks, as the roles write it when no project is named.
    if value == "":
        return value
    if not isinstance(value, str) or not _APP_RE.fullmatch(value):
        raise ConfigError(
            f"{key} must name a Celery app as package.module:attribute "
            f"(e.g. myproj.celery:app), got {value!r}"
        )
    return value


def _task_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _TASK_RE.fullmatch(value):
        raise ConfigError(f"{key} entries must be dotted task names, got {value!r}")
    return value


def _number(value: Any, key: str, *, minimum: float, exclusive: bool = False) -> float:
    # bool is an int subclass; a JSON true is never a meaningful number here.
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and isinstance(value, float):
        ok = math.isfinite(value)
    if ok:
        ok = value > minimum if exclusive else value >= minimum
    if not ok:
        bound = f"> {minimum}" if exclusive else f">= {minimum}"
        raise ConfigError(f"{key} must be a number {bound}, got {value!r}")
    return value


def _integer(value: Any, key: str, *, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")
