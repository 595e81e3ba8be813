"""Hypothesis throws hostile input at the real web process.

Whatever a client sends within the body size limit, the API must answer a
JSON 4xx error and publish nothing. "Nothing published" is checked on the
broker itself: every example counts the Redis server's push commands (kombu
sends a task with one LPUSH) before and after its request, which, unlike the
queue lengths, a fast worker cannot empty behind our back.
"""

import json
import re
import string
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import (
    ALLOWED_TASKS,
    BROKER_DB,
    MAX_BODY_BYTES,
    MAX_WAIT_SECONDS,
    QUEUES,
    VISIBILITY_TIMEOUT,
    RedisServer,
)
from helpers import Response, Web
from stackdemo.config import Config, load_config
from stackdemo.web.validation import (
    LATEST_EXPIRY,
    MAX_JSON_DEPTH,
    SUBMIT_KEYS,
    ApiError,
    parse_submission,
)

ADD = "stackdemo.tasks.add"
SUBMIT = f"/api/tasks/{ADD}"
PUSH_COMMANDS = ("lpush", "rpush", "lpushx", "rpushx")

# Each example is one HTTP round trip (and an INFO call); these bounds keep
# the module near ten seconds. No example database: nothing is written to
# the source tree, and a failure prints the input to reproduce it.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def pushes(redis_server: RedisServer) -> Iterator[Callable[[], int]]:
    admin = redis_server.client(BROKER_DB)

    def count() -> int:
        stats = admin.info("commandstats")
        return sum(
            stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in PUSH_COMMANDS
        )

    yield count
    admin.close()


@pytest.fixture(scope="module")
def web_log_start(web: Web) -> int:
    assert web.log is not None
    return web.log.stat().st_size


def assert_json_error(resp: Response, *statuses: int) -> None:
    assert resp.status in statuses, f"{resp.status} {resp.text!r}"
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    body = json.loads(resp.text)
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str), body
    assert body["error"], body


def rejected(
    web: Web,
    pushes: Callable[[], int],
    method: str,
    path: str,
    *statuses: int,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    before = pushes()
    resp = web.request(method, path, body=body, headers=headers)
    assert_json_error(resp, *statuses)
    assert pushes() == before, f"{method} {path} {body!r} reached the broker"
    return resp


def expected_status(body: bytes) -> int:
    return 413 if len(body) > MAX_BODY_BYTES else 400


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _could_be_a_submission(body: bytes) -> bool:
    """True if ``body`` is (or may be) a JSON object, so not certainly hostile."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not text.strip(" \t\r\n"):
        return True  # An empty body means {} by design.
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


# --- strategies -----------------------------------------------------------

CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=utf-16",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "",
    ]
)


def _headers(content_type: str | None) -> dict[str, str]:
    return {} if content_type is None else {"Content-Type": content_type}


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
json_values = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=10,
)

# Numbers JSON can spell but a double cannot hold, and non-JSON constants.
overflowing_floats = st.sampled_from(
    ["1e400", "-1e400", "1E999", "2e308", "1e+309"]
) | st.integers(min_value=310, max_value=4000).map(lambda n: "9" * n + ".5")
non_json_constants = st.sampled_from(["NaN", "Infinity", "-Infinity"])
huge_ints = st.integers(min_value=25, max_value=4000).map(lambda n: "9" * n)


@st.composite
def lone_surrogate_strings(draw: st.DrawFn) -> str:
    """A JSON string literal holding an unpaired UTF-16 surrogate escape."""
    code = draw(st.integers(min_value=0xD800, max_value=0xDFFF))
    before = draw(st.text(string.ascii_letters, max_size=4))
    after = draw(st.text(string.ascii_letters, max_size=4))
    return f'"{before}\\u{code:04x}{after}"'


bad_tokens = overflowing_floats | non_json_constants | lone_surrogate_strings()

# Where a bad token lands: anywhere in the data, not just in checked fields.
SLOTS = [
    '{{"args": [{}, 1]}}',
    '{{"args": [1, [[{{"deep": {}}}]]]}}',
    '{{"kwargs": {{"x": 1, "y": {}}}}}',
    '{{"args": [1, 2], "link": {{"task": "' + ADD + '", "args": [{}]}}}}',
    '{{"args": [1, 2], "countdown": {}}}',
    '{{"args": [1, 2], "expires": {}}}',
    '{{"args": [1, 2], "priority": {}}}',
]
token_bodies = st.builds(
    lambda slot, token: slot.format(token).encode(), st.sampled_from(SLOTS), bad_tokens
)
# A lone surrogate as an object key, and out-of-range integers where a
# number of seconds or a priority is expected.
surrogate_key_bodies = lone_surrogate_strings().map(
    lambda key: f'{{"kwargs": {{{key}: 1}}}}'.encode()
)
huge_int_bodies = st.builds(
    lambda key, sign, digits: f'{{"{key}": {sign}{digits}}}'.encode(),
    st.sampled_from(["countdown", "expires", "priority"]),
    st.sampled_from(["", "-"]),
    huge_ints,
)


@st.composite
def deeply_nested(draw: st.DrawFn) -> bytes:
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    room = (MAX_BODY_BYTES - 40) // (len(opener) + len(closer))
    depth = draw(st.integers(min_value=MAX_JSON_DEPTH + 1, max_value=room))
    inner = opener * depth + "1" + closer * draw(st.sampled_from([0, depth]))
    wrap = draw(
        st.sampled_from(["{}", '{{"args": [{}]}}', '{{"kwargs": {{"v": {}}}}}'])
    )
    return wrap.format(inner).encode()


valid_payloads = st.fixed_dictionaries(
    {"args": st.lists(st.integers(min_value=-9, max_value=9), max_size=2)}
)
other_encodings = st.builds(
    lambda payload, codec: json.dumps(payload).encode(codec),
    valid_payloads,
    st.sampled_from(
        ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
    ),
) | st.builds(
    lambda payload, codec, text: json.dumps(
        {**payload, "kwargs": {"v": text}}, ensure_ascii=False
    ).encode(codec),
    valid_payloads,
    st.sampled_from(["latin-1", "cp1252"]),
    st.text(st.characters(min_codepoint=0xC0, max_codepoint=0xFF), min_size=1),
).filter(lambda body: not _is_utf8(body))
bom_bodies = valid_payloads.map(lambda p: json.dumps(p).encode("utf-8-sig"))
# Overlong, surrogate, beyond-U+10FFFF, stray continuation and truncated.
INVALID_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]
invalid_utf8_bodies = st.builds(
    lambda junk, tail: b'{"args": ["' + junk + tail + b'", 1]}',
    st.sampled_from([*INVALID_UTF8, b"\xe2\x82"]),
    st.text(string.ascii_letters, max_size=8).map(str.encode),
)
non_objects = json_values.filter(lambda v: not isinstance(v, dict)).map(
    lambda v: json.dumps(v).encode()
)
garbage = (st.binary(max_size=256) | st.text(max_size=256).map(str.encode)).filter(
    lambda body: not _could_be_a_submission(body)
)
# Not JSON whitespace, though bytes.strip() takes them for it.
odd_blank_bodies = st.lists(
    st.sampled_from([b"\x0b", b"\x0c", b"\x1c", b"\x00"]), min_size=1
).map(b"".join)

malformed_bodies = st.one_of(
    garbage,
    deeply_nested(),
    other_encodings,
    bom_bodies,
    invalid_utf8_bodies,
    non_objects,
    token_bodies,
    surrogate_key_bodies,
    huge_int_bodies,
    odd_blank_bodies,
)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)),
    st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1),
)
NAIVE_MIN, NAIVE_MAX = datetime(1, 1, 2), datetime(9999, 12, 30)
far_from_now = st.datetimes(NAIVE_MIN, NAIVE_MAX, timezones=offsets).filter(
    lambda dt: abs((dt - datetime.now(UTC)).total_seconds()) > 86400
)
past = st.datetimes(NAIVE_MIN, datetime(2000, 1, 1), timezones=offsets)
# Later than datetime.max once in UTC.
beyond_max = st.builds(
    lambda minutes: datetime(9999, 12, 31, 23, 59).replace(
        tzinfo=timezone(-timedelta(minutes=minutes))
    ),
    st.integers(min_value=1, max_value=24 * 60 - 1),
)
iso = st.sampled_from([datetime.isoformat, lambda dt: dt.isoformat(sep=" ")])
not_iso = st.text(max_size=40).filter(lambda s: not s.strip()[:4].isdigit())
non_numbers = json_values.filter(lambda v: not _number(v))

bad_countdowns = (
    non_numbers
    | st.floats(max_value=-1e-9, allow_infinity=False)
    | st.integers(max_value=-1)
    | st.floats(min_value=VISIBILITY_TIMEOUT + 1e-6, allow_infinity=False)
    | st.integers(min_value=VISIBILITY_TIMEOUT + 1)
)
bad_etas = (
    json_values.filter(lambda v: not isinstance(v, str))
    | not_iso
    | st.builds(lambda f, dt: f(dt), iso, far_from_now | beyond_max)
    | st.datetimes(NAIVE_MIN, NAIVE_MAX).map(datetime.isoformat)  # no offset
)
bad_expires = (
    json_values.filter(lambda v: not isinstance(v, str) and not _number(v))
    | st.floats(max_value=0, allow_infinity=False)
    | st.integers(max_value=0)
    # Beyond the year 9999 from now.
    | st.floats(min_value=1e12, allow_infinity=False)
    | st.integers(min_value=10**12)
    | not_iso
    | st.builds(lambda f, dt: f(dt), iso, past | beyond_max)
)
bad_priorities = json_values.filter(
    lambda v: not (_number(v) and isinstance(v, int) and 0 <= v <= 9)
) | st.integers().filter(lambda v: not 0 <= v <= 9)
bad_links = (
    json_values.filter(lambda v: not isinstance(v, (str, dict)))
    | st.text(max_size=30).filter(lambda v: v not in ALLOWED_TASKS)
    | st.fixed_dictionaries(
        {"task": json_values.filter(lambda v: v not in ALLOWED_TASKS)}
    )
    | st.fixed_dictionaries(
        {
            "task": st.just(ADD),
            "args": json_values.filter(lambda v: not isinstance(v, list)),
        }
    )
    | st.fixed_dictionaries(
        {
            "task": st.just(ADD),
            "kwargs": json_values.filter(lambda v: not isinstance(v, dict)),
        }
    )
    | st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("task", "args", "kwargs")),
        json_values,
        min_size=1,
    ).map(lambda d: {"task": ADD, **d})
)
invalid_fields = st.one_of(
    st.tuples(st.just("args"), json_values.filter(lambda v: not isinstance(v, list))),
    st.tuples(st.just("kwargs"), json_values.filter(lambda v: not isinstance(v, dict))),
    st.tuples(st.just("countdown"), bad_countdowns),
    st.tuples(st.just("eta"), bad_etas),
    st.tuples(st.just("expires"), bad_expires),
    st.tuples(st.just("queue"), json_values.filter(lambda v: v not in QUEUES)),
    st.tuples(st.just("priority"), bad_priorities),
    st.tuples(st.just("link"), bad_links),
    st.tuples(st.text(max_size=20).filter(lambda k: k not in SUBMIT_KEYS), json_values),
)

# /add and ?wait= take a number from the query string.
number_attacks = st.sampled_from(
    [
        "1e999",
        "-1e999",
        "1E400",
        "nan",
        "NaN",
        "-nan",
        "inf",
        "-inf",
        "+inf",
        "Infinity",
        "infinity",
        "0x1f",
        "1_000",
        "1,5",
        "+-1",
        "--1",
        "1e",
        "e1",
        ".",
        "",
        "1.2.3",
        "\x00",
        "١e999",
    ]
) | st.integers(min_value=310, max_value=3000).map(lambda n: "9" * n)


def _not_a_float(text: str) -> bool:
    # As Tornado reads a query argument: control characters become spaces,
    # then it strips (so " 1" is 1, by Tornado's design).
    text = re.sub(r"[\x00-\x08\x0e-\x1f]", " ", text).strip()
    try:
        float(text)
    except ValueError:
        return True
    return False


random_words = st.text(max_size=30).filter(_not_a_float)
# Percent-escapes that do not decode as UTF-8.
RAW_ESCAPES = ["%ff", "%c0%af", "%ed%a0%80", "%f4%90%80%80", "%80", "%e2%82"]


def _q(text: str) -> str:
    return quote(text, safe="")


bad_values = (number_attacks | random_words).map(_q) | st.sampled_from(RAW_ESCAPES)
good_values = st.integers(min_value=-99, max_value=99).map(str)


@st.composite
def bad_add_queries(draw: st.DrawFn) -> str:
    shape = draw(st.sampled_from(["bad x", "bad y", "missing", "repeated", "blank"]))
    x, y = draw(good_values), draw(good_values)
    if shape == "bad x":
        return f"x={draw(bad_values)}&y={y}"
    if shape == "bad y":
        return f"x={x}&y={draw(bad_values)}"
    if shape == "missing":
        return draw(
            st.sampled_from(
                [f"x={x}", f"y={y}", "", f"X={x}&Y={y}", f"x[]={x}&y[]={y}"]
            )
        )
    if shape == "repeated":
        name = draw(st.sampled_from(["x", "y"]))
        again = draw(good_values)
        return f"x={x}&y={y}&{name}={again}"
    return draw(st.sampled_from([f"x&y={y}", f"x=&y={y}", f"x={x}&y", "&&x=1&&"]))


# --- tests ------------------------------------------------------------------


def test_the_push_counter_sees_a_real_submission(web, pushes, web_log_start):
    # Proves the oracle below: an accepted task does move the counter.
    before = pushes()
    task_id = web.submit(ADD, args=[1, 2])
    assert pushes() > before
    assert web.wait(task_id)["result"] == 3


def submission_rejected(web, pushes, body, content_type):
    """POST `body` to submit: a 4xx JSON error, and nothing pushed to Redis."""
    rejected(
        web,
        pushes,
        "POST",
        SUBMIT,
        expected_status(body),
        body=body,
        headers=_headers(content_type),
    )


@FUZZ
@given(body=malformed_bodies, content_type=CONTENT_TYPES)
@example(body=b"[" * 10_000, content_type="application/json")
@example(body=b"[" * MAX_BODY_BYTES, content_type="application/json")
@example(body=b'{"args": ' + b"[" * 2000 + b"]" * 2000 + b"}", content_type=None)
@example(body=b'{"args": [1e400, 1]}', content_type="application/json")
@example(body=b'{"countdown": 1' + b"0" * 5000 + b"}", content_type=None)
@example(body=b'{"countdown": 1' + b"0" * 4000 + b"}", content_type=None)
@example(body=b'{"expires": 1' + b"0" * 4000 + b"}", content_type=None)
@example(body=b'{"args": [NaN, Infinity]}', content_type="application/json")
@example(body=b'{"args": ["\\ud800", 1]}', content_type="application/json")
@example(body=b'{"kwargs": {"\\udfff": 1}}', content_type="application/json")
@example(body=b'{"args": ["\xed\xa0\x80", 1]}', content_type="application/json")
@example(body=b'{"args": ["\xff", 1]}', content_type="application/json")
@example(body='{"args": [1, 2]}'.encode("utf-16"), content_type="application/json")
@example(body='{"args": [1, 2]}'.encode("utf-8-sig"), content_type="application/json")
@example(body=b"\x0c", content_type="application/json")
@example(body=b"null", content_type="application/json")
@example(body=b'"{}"', content_type="text/plain")
@example(body=b"[1, 2]", content_type="application/x-www-form-urlencoded")
def test_malformed_bodies(web, pushes, body, content_type):
    submission_rejected(web, pushes, body, content_type)


@FUZZ
@given(field=invalid_fields, content_type=CONTENT_TYPES)
@example(field=("countdown", "5"), content_type=None)
@example(field=("countdown", -1e-300), content_type=None)
@example(field=("countdown", 10**4000), content_type=None)
@example(field=("expires", 1e300), content_type=None)
@example(field=("expires", 10**15), content_type=None)
@example(field=("expires", 10**4000), content_type=None)
@example(field=("expires", "9999-12-31T23:59:59-23:59"), content_type=None)
@example(field=("expires", "0001-01-01T00:00:00+23:59"), content_type=None)
@example(field=("eta", "9999-12-31T23:59:59-23:59"), content_type=None)
@example(field=("eta", "0001-01-01T00:00:00+23:59"), content_type=None)
@example(field=("eta", ""), content_type=None)
@example(field=("args", "1,2"), content_type=None)
@example(field=("kwargs", [["x", 1]]), content_type=None)
@example(field=("queue", ["celery"]), content_type=None)
@example(field=("priority", 10**4000), content_type=None)
@example(field=("link", {"task": ADD, "args": None}), content_type=None)
@example(field=("__proto__", {}), content_type=None)
def test_invalid_fields(web, pushes, field, content_type):
    key, value = field
    body = json.dumps({"args": [1, 2], key: value}).encode()
    submission_rejected(web, pushes, body, content_type)


@FUZZ
@given(query=bad_add_queries())
@example(query="x=1e999&y=1")
@example(query="x=nan&y=1")
@example(query="x=inf&y=1")
@example(query="x=1&y=-Infinity")
@example(query="x=" + "9" * 5000 + "&y=1")
@example(query="x=" + "1" * 65 + "e999&y=1")
@example(query="x=1&x=2&y=3")
@example(query="x=1&y=2&y=3")
@example(query="x=%ff&y=1")
@example(query="x=%ed%a0%80&y=1")
def test_add_rejects_odd_queries(web, pushes, query):
    rejected(web, pushes, "GET", f"/add?{query}", 400)


@st.composite
def bad_status_requests(draw: st.DrawFn) -> str:
    good_id = "0b7e2f2a-8a2b-4f0e-9c1e-3f6b2d1c0a99"
    if draw(st.booleans()):
        task_id = draw(
            st.text(min_size=65, max_size=80, alphabet="abc-0")
            | st.text(min_size=1, max_size=20)
            .filter(
                lambda s: any(
                    not (c.isascii() and (c.isalnum() or c == "-")) for c in s
                )
            )
            .map(_q)
            | st.sampled_from(RAW_ESCAPES)
        )
        return f"/api/tasks/{task_id}"
    wait = draw(
        bad_values
        | st.sampled_from(
            [
                "-1",
                "-0.001",
                str(MAX_WAIT_SECONDS + 1),
                "1e308",
                f"{MAX_WAIT_SECONDS}.001",
            ]
        )
        | st.just("1&wait=2")
    )
    return f"/api/tasks/{good_id}?wait={wait}"


@FUZZ
@given(path=bad_status_requests())
@example(path="/api/tasks/x?wait=nan")
@example(path="/api/tasks/x?wait=1e999")
@example(path="/api/tasks/x?wait=-1")
@example(path="/api/tasks/x?wait=1&wait=2")
@example(path="/api/tasks/%ff")
@example(path="/api/tasks/" + "a" * 65)
def test_status_rejects_odd_ids_and_waits(web, pushes, path):
    rejected(web, pushes, "GET", path, 400)


@FUZZ
@given(
    method=st.sampled_from(["PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "POST"]),
    path=st.sampled_from(["/add?x=1&y=2", SUBMIT]),
    body=st.binary(max_size=64) | malformed_bodies,
)
@example(method="POST", path="/add?x=1&y=2", body=b'{"args": [1, 2]}')
@example(method="PUT", path=SUBMIT, body=b'{"args": [1, 2]}')
def test_other_methods_are_405(web, pushes, method, path, body):
    if method == "POST" and path == SUBMIT:
        path = "/add?x=1&y=2"
    rejected(web, pushes, method, path, 405, body=body)


@FUZZ
@given(
    name=st.text(min_size=1, max_size=40).filter(lambda n: n not in ALLOWED_TASKS),
    body=st.just(b"") | valid_payloads.map(lambda p: json.dumps(p).encode()),
)
@example(name="celery.backend_cleanup", body=b"")
@example(name=ADD + " ", body=b'{"args": [1, 2]}')
@example(name=ADD.upper(), body=b'{"args": [1, 2]}')
def test_tasks_outside_the_allow_list(web, pushes, name, body):
    rejected(web, pushes, "POST", f"/api/tasks/{_q(name)}", 404, body=body)


def test_still_serving_after_the_fuzzing(web, web_log_start):
    assert web.process is not None and web.process.poll() is None
    assert web.get("/add?x=40&y=2").json()["result"] == 42
    assert web.log is not None
    with web.log.open("rb") as log:
        log.seek(web_log_start)
        tail = log.read().decode(errors="replace")
    assert "Traceback" not in tail, tail[-3000:]


# --- the limits leave valid input alone (in-process, no HTTP) --------------


@pytest.fixture(scope="module")
def web_config(configs) -> Config:
    return load_config(configs["web"])


def _parse(config: Config, body: str) -> Any:
    return parse_submission(ADD, body.encode(), config, datetime.now(UTC))


def test_nesting_up_to_the_limit_is_accepted(web_config):
    def nested(levels: int) -> str:
        # The body object and args are two of the levels.
        inner = levels - 2
        return '{"args": [' + "[" * inner + "]" * inner + "]}"

    value: list[Any] = []
    for _ in range(MAX_JSON_DEPTH - 3):
        value = [value]
    assert _parse(web_config, nested(MAX_JSON_DEPTH)).args == [value]
    with pytest.raises(ApiError) as error:
        _parse(web_config, nested(MAX_JSON_DEPTH + 1))
    assert "deeper than" in error.value.message


def test_brackets_and_quotes_inside_strings_do_not_nest(web_config):
    text = '\\"' + "[{" * 200
    sub = _parse(web_config, json.dumps({"args": [text, 1]}))
    assert sub.args == [text, 1]


def test_surrogate_pairs_and_plain_unicode_are_fine(web_config):
    sub = _parse(web_config, '{"args": ["\\ud83d\\ude00 \u00e9\u6f22", 1]}')
    assert sub.args == ["\U0001f600 \u00e9\u6f22", 1]


def test_far_but_representable_expiry_is_accepted(web_config):
    assert _parse(web_config, '{"expires": 100000000000}').expires == 10**11
    when = (LATEST_EXPIRY - timedelta(days=1)).isoformat()
    assert _parse(web_config, json.dumps({"expires": when})).expires is not None


def test_huge_but_finite_numbers_in_args_are_still_accepted(web_config):
    sub = _parse(web_config, '{"args": [1e308, ' + "9" * 400 + "]}")
    assert sub.args == [1e308, int("9" * 400)]
