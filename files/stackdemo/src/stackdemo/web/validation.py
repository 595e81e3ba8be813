"""Turn untrusted request input into submit parameters or a precise 4xx error."""

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tornado.web import HTTPError

from stackdemo.config import Config

SUBMIT_KEYS = (
    "args",
    "kwargs",
    "countdown",
    "eta",
    "expires",
    "queue",
    "priority",
    "link",
)
LINK_KEYS = ("task", "args", "kwargs")
# Celery ids are UUIDs; anything else cannot name one of our keys.
TASK_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
_INT_RE = re.compile(r"[+-]?\d{1,64}")
_FLOAT_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# json, and pickle in the worker's prefork pool, recurse once per level of
# [ or {. Unchecked, ~1000 levels made json.loads raise RecursionError (a
# 500), and 500 balanced levels (1 KB) were accepted, then crashed the worker
# ("Unrecoverable error"), which put the message back for the next one.
MAX_JSON_DEPTH = 64
# RFC 8259 whitespace; bytes.strip() would also take \v and \f.
_JSON_WHITESPACE = b" \t\r\n"
# Celery adds expires to now and converts it between time zones: beyond
# this (a day short of datetime.max, for the offsets) send_task raised
# OverflowError, answered as a 503 "could not send the task to the broker".
LATEST_EXPIRY = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


class ApiError(HTTPError):
    """A client error whose message is safe to return in the JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status)
        self.message = message


@dataclass(frozen=True)
class Link:
    name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Submission:
    name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    countdown: float | None = None
    eta: datetime | None = None
    expires: float | datetime | None = None
    queue: str | None = None
    priority: int | None = None
    link: Link | None = None


def parse_number(text: str | None, name: str) -> int | float:
    """Query parameters of /add: ints stay ints so 2+3 answers 5, not 5.0."""
    if text is None or text == "":
        raise ApiError(400, f"missing query parameter {name!r}")
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        value = float(text)
        if math.isfinite(value):
            return value
    raise ApiError(400, f"query parameter {name!r} must be a finite number")


def check_task_allowed(name: str, config: Config) -> None:
    if name not in config.web.allowed_tasks:
        raise ApiError(404, f"unknown task {name!r}")


def check_task_id(task_id: str) -> None:
    if not TASK_ID_RE.fullmatch(task_id):
        raise ApiError(400, "task id must be 1-64 letters, digits or '-'")


def decode_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip(_JSON_WHITESPACE):
        return {}
    try:
        # UTF-8 only (RFC 8259 8.1). json.loads(bytes) would also guess
        # UTF-16/32, skip a BOM and let encoded lone surrogates through.
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    _check_depth(text)
    try:
        data = json.loads(
            text, parse_constant=_reject_constant, parse_float=_finite_float
        )
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    _reject_lone_surrogates(data)
    return data


def _check_depth(text: str) -> None:
    """Refuse nesting beyond MAX_JSON_DEPTH before anything recurses on it."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ApiError(
                    400, f"request body nests deeper than {MAX_JSON_DEPTH} levels"
                )
        elif char in "]}":
            depth -= 1


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON syntax, but json.loads made it inf, the very value
    # _reject_constant keeps out, and passed it on to the worker.
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(400, f"number {text[:32]} is too large for a 64-bit float")
    return value


def _reject_lone_surrogates(data: dict[str, Any]) -> None:
    # A "\ud800" escape without its pair decodes to a str that is not
    # Unicode text (RFC 8259 8.2) and cannot be encoded as UTF-8; it went
    # through to the worker, in keys as well as values.
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400, "request body has a string with an unpaired UTF-16 surrogate"
        ) from None


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python would accept them by default.
    raise ValueError(f"{name} is not allowed")


def parse_submission(
    name: str, body: bytes, config: Config, now: datetime
) -> Submission:
    """Validate a POST /api/tasks/<name> body. ``now`` must be timezone-aware."""
    check_task_allowed(name, config)
    data = decode_json_object(body)
    _reject_unknown(data, SUBMIT_KEYS, "request body")
    kwargs: dict[str, Any] = {
        "args": _list(data.get("args", []), "args"),
        "kwargs": _object(data.get("kwargs", {}), "kwargs"),
    }
    limit = config.visibility_timeout
    if "countdown" in data and "eta" in data:
        raise ApiError(400, "give either countdown or eta, not both")
    if "countdown" in data:
        countdown = _seconds(data["countdown"], "countdown", allow_zero=True)
        if countdown > limit:
            raise ApiError(400, _beyond_visibility("countdown", limit))
        kwargs["countdown"] = countdown
    if "eta" in data:
        eta = _datetime(data["eta"], "eta")
        ahead = (eta - now).total_seconds()
        if -ahead > config.web.max_eta_past_seconds:
            raise ApiError(
                400,
                f"eta is {-ahead:.0f} s in the past; at most "
                f"{config.web.max_eta_past_seconds} s is accepted",
            )
        if ahead > limit:
            raise ApiError(400, _beyond_visibility("eta", limit))
        kwargs["eta"] = eta
    if "expires" in data:
        kwargs["expires"] = _expires(data["expires"], now)
    if "queue" in data:
        kwargs["queue"] = _queue(data["queue"], config)
    if "priority" in data:
        kwargs["priority"] = _priority(data["priority"])
    if "link" in data:
        kwargs["link"] = _link(data["link"], config)
    return Submission(name=name, **kwargs)


def _beyond_visibility(key: str, limit: int) -> str:
    return (
        f"{key} must be at most {limit} s ahead: the broker's visibility timeout "
        "would hand the waiting message to another worker and run it twice"
    )


def _reject_unknown(data: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ApiError(
            400,
            f"unknown key(s) in {where}: {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed)}",
        )


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ApiError(400, f"{key} must be a JSON array")
    return value


def _object(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(400, f"{key} must be a JSON object")
    return value


def _seconds(value: Any, key: str, *, allow_zero: bool) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    # Ints are always finite; math.isfinite() raised OverflowError (a 500)
    # for ints beyond a float's range, like a 400-digit countdown.
    finite = number and (isinstance(value, int) or math.isfinite(value))
    if finite and (value > 0 or (allow_zero and value == 0)):
        return value
    bound = ">= 0" if allow_zero else "> 0"
    raise ApiError(400, f"{key} must be a number of seconds {bound}")


def _datetime(value: Any, key: str) -> datetime:
    if not isinstance(value, str):
        raise ApiError(400, f"{key} must be an ISO 8601 date-time string")
    text = value.strip()
    # RFC 3339 also allows a lower-case z, which fromisoformat rejects.
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(
            400, f"{key} must be an ISO 8601 date-time like 2030-01-01T12:00:00Z"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ApiError(400, f"{key} must include a UTC offset, like Z or +02:00")
    return parsed


def _expires(value: Any, now: datetime) -> float | datetime:
    latest = (LATEST_EXPIRY - now).total_seconds()
    too_late = f"expires must be before {LATEST_EXPIRY:%Y-%m-%d} UTC"
    if isinstance(value, str):
        expires = _datetime(value, "expires")
        if expires <= now:
            raise ApiError(400, "expires is in the past")
        if (expires - now).total_seconds() > latest:
            raise ApiError(400, too_late)
        return expires
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = _seconds(value, "expires", allow_zero=False)
        if seconds > latest:
            raise ApiError(400, too_late)
        return seconds
    raise ApiError(
        400, "expires must be seconds from now (> 0) or an ISO 8601 date-time"
    )


def _queue(value: Any, config: Config) -> str:
    if not isinstance(value, str) or value not in config.queues:
        known = ", ".join(sorted(config.queues))
        raise ApiError(400, f"queue must be one of the configured queues: {known}")
    return value


def _priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ApiError(400, "priority must be an integer from 0 to 9")
    return value


def _link(value: Any, config: Config) -> Link:
    if isinstance(value, str):
        value = {"task": value}
    if not isinstance(value, dict):
        raise ApiError(400, 'link must be a task name or {"task", "args", "kwargs"}')
    _reject_unknown(value, LINK_KEYS, "link")
    name = value.get("task")
    if not isinstance(name, str) or name not in config.web.allowed_tasks:
        raise ApiError(400, "link must name an allowed task")
    return Link(
        name=name,
        args=_list(value.get("args", []), "link.args"),
        kwargs=_object(value.get("kwargs", {}), "link.kwargs"),
    )
