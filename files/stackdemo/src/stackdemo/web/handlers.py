"""HTTP handlers; every answer, errors included, is JSON (except /metrics)."""

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from tornado.web import HTTPError, RequestHandler, stream_request_body

from stackdemo.config import priority_lists
from stackdemo.keys import DEAD_LETTER_KEY, DEAD_LETTER_TOTAL_KEY
from stackdemo.web.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from stackdemo.web.metrics import (
    render_gauge,
    render_process,
    render_queue_depths,
)
from stackdemo.web.results import KEY_PREFIX, READY_STATES, parse_meta
from stackdemo.web.validation import (
    ApiError,
    Submission,
    check_task_id,
    parse_number,
    parse_submission,
)

if TYPE_CHECKING:
    from stackdemo.web.server import Context
    from stackdemo.web.submit import Submitted

log = logging.getLogger(__name__)

ADD_TASK = "stackdemo.tasks.add"


class BaseHandler(RequestHandler):
    metric_name = "other"

    def initialize(self, ctx: "Context") -> None:
        self.ctx = ctx
        self._in_flight = False

    def prepare(self) -> None:
        self.ctx.in_flight += 1
        self._in_flight = True

    def on_finish(self) -> None:
        if self._in_flight:
            self.ctx.in_flight -= 1
        self.ctx.metrics.observe_request(
            self.metric_name,
            self.request.method or "",
            self.get_status(),
            self.request.request_time(),
        )

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            message = exc.message
        elif status_code >= 500:
            message = "internal server error"
        else:
            message = self._reason.lower()
        self.send_json(status_code, {"error": message})

    def single_query_argument(self, name: str) -> str | None:
        values = self.get_query_arguments(name)
        # Tornado would quietly use the last of x=1&x=2, while a proxy or
        # log may read the first: refuse the ambiguity.
        if len(values) > 1:
            raise ApiError(400, f"query parameter {name!r} is given more than once")
        return values[0] if values else None

    async def submit(self, submission: Submission) -> "Submitted":
        try:
            return await self.ctx.submitter.submit(submission)
        except Exception as exc:
            # Whatever kombu raised, the client can only retry later.
            self.ctx.metrics.submit_errors += 1
            log.warning("sending %s failed: %r", submission.name, exc)
            raise ApiError(503, "could not send the task to the broker") from exc

    async def read_meta(self, task_id: str) -> dict[str, Any] | None:
        try:
            return parse_meta(await self.ctx.results.get(KEY_PREFIX + task_id))
        except (RedisError, OSError) as exc:
            log.warning("reading the result of %s failed: %r", task_id, exc)
            raise ApiError(503, "the result backend is unavailable") from exc

    async def await_result(
        self, task_id: str, timeout: float, until_stopping: bool = False
    ) -> dict | None:
        """The task's final meta; None on timeout, or when the process stops
        while ``until_stopping`` waits are still open."""
        self.ctx.metrics.waits_in_flight += 1
        try:
            wait = asyncio.ensure_future(self.ctx.waiter.wait(task_id, timeout))
            if not until_stopping:
                return await wait
            stopping = asyncio.ensure_future(self.ctx.stopping.wait())
            try:
                await asyncio.wait(
                    (wait, stopping), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopping.cancel()
            if not wait.done():
                wait.cancel()
                await asyncio.gather(wait, return_exceptions=True)
                return None
            return wait.result()
        finally:
            self.ctx.metrics.waits_in_flight -= 1


def failure_text(meta: dict[str, Any]) -> str:
    """Exception type and message only: tracebacks stay in the worker's log."""
    result = meta.get("result")
    if isinstance(result, dict) and "exc_type" in result:
        message = result.get("exc_message")
        if isinstance(message, (list, tuple)):
            message = ", ".join(str(part) for part in message)
        return f"{result['exc_type']}: {message}" if message else result["exc_type"]
    return str(result)


def describe(task_id: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    state = meta.get("status", "PENDING") if meta else "PENDING"
    body: dict[str, Any] = {"task_id": task_id, "state": state, "result": None}
    if state == "SUCCESS":
        body["result"] = meta.get("result") if meta else None
    elif state in ("FAILURE", "REVOKED") and meta:
        body["error"] = failure_text(meta)
    return body


class AddHandler(BaseHandler):
    metric_name = "add"

    async def get(self) -> None:
        x = parse_number(self.single_query_argument("x"), "x")
        y = parse_number(self.single_query_argument("y"), "y")
        submitted = await self.submit(Submission(name=ADD_TASK, args=[x, y]))
        task_id = submitted.task_id
        wait = self.ctx.config.web.max_wait_seconds
        meta = await self.await_result(task_id, wait)
        if meta is None:
            error = f"no result within {wait} s"
            # Accepted all the same: the client can ask for the outcome later.
            status_url = f"/api/tasks/{task_id}"
            self.send_json(
                504, {"error": error, "task_id": task_id, "status_url": status_url}
            )
        elif meta.get("status") == "SUCCESS":
            self.send_json(200, {"result": meta.get("result"), "task_id": task_id})
        else:
            self.send_json(502, describe(task_id, meta))


@stream_request_body
class TaskHandler(BaseHandler):
    """POST /api/tasks/<name> submits, GET /api/tasks/<id> reports."""

    @property
    def metric_name(self) -> str:
        return "task_submit" if self.request.method == "POST" else "task_status"

    def prepare(self) -> None:
        super().prepare()
        self._chunks: list[bytes] = []
        self._size = 0
        limit = self.ctx.config.web.max_body_bytes
        declared = self.request.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes")

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._size += len(chunk)
        # Keep counting past the limit but stop buffering.
        if self._size <= self.ctx.config.web.max_body_bytes:
            self._chunks.append(chunk)

    async def post(self, name: str) -> None:
        limit = self.ctx.config.web.max_body_bytes
        if self._size > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes")
        submission = parse_submission(
            name, b"".join(self._chunks), self.ctx.config, datetime.now(UTC)
        )
        submitted = await self.submit(submission)
        status_url = f"/api/tasks/{submitted.task_id}"
        body: dict[str, Any] = {"task_id": submitted.task_id, "status_url": status_url}
        if submitted.link_task_id:
            body["link_task_id"] = submitted.link_task_id
        self.set_header("Location", status_url)
        self.send_json(202, body)

    async def get(self, task_id: str) -> None:
        check_task_id(task_id)
        wait = self._wait_seconds()
        meta = await self.read_meta(task_id)
        ready = bool(meta) and meta.get("status") in READY_STATES
        if wait is None or ready:
            self.send_json(200, describe(task_id, meta))
            return
        # A long poll is cut short when the process stops, so that a restart
        # is not held up by it: the client gets the state so far and asks
        # again, on a new connection, of the next process.
        final = await self.await_result(task_id, wait, until_stopping=True)
        if final is None and self.ctx.stopping.is_set():
            self.send_json(200, describe(task_id, await self.read_meta(task_id)))
        elif final is None:
            body = describe(task_id, meta)
            body["error"] = f"task not finished within {wait} s"
            self.send_json(504, body)
        else:
            self.send_json(200, describe(task_id, final))

    def _wait_seconds(self) -> float | None:
        raw = self.single_query_argument("wait")
        if raw is None:
            return None
        wait = parse_number(raw, "wait")
        limit = self.ctx.config.web.max_wait_seconds
        if not 0 <= wait <= limit:
            raise ApiError(400, f"wait must be between 0 and {limit} seconds")
        return wait


class HealthHandler(BaseHandler):
    metric_name = "healthz"

    async def get(self) -> None:
        try:
            await asyncio.wait_for(self.ctx.broker.ping(), timeout=5)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("broker health check failed: %r", exc)
            self.send_json(503, {"broker": "unavailable"})
            return
        self.send_json(200, {"broker": "ok"})


class MetricsHandler(BaseHandler):
    metric_name = "metrics"

    async def get(self) -> None:
        body = self.ctx.metrics.render() + render_process()
        lists = {queue: priority_lists(queue) for queue in self.ctx.config.queues}
        try:
            # Plain reads, no MULTI: the web's ACL grants the dead letters read-only.
            async with self.ctx.broker.pipeline(transaction=False) as pipe:
                pipe.llen(DEAD_LETTER_KEY).get(DEAD_LETTER_TOTAL_KEY)
                for names in lists.values():
                    for name in names:
                        pipe.llen(name)
                held, total, *lengths = await pipe.execute()
        except (RedisError, OSError):
            held = total = None  # the broker's health is /healthz's job
        if held is not None:
            depths = iter(lengths)
            body += render_queue_depths(
                {
                    queue: sum(next(depths) for _ in names)
                    for queue, names in lists.items()
                }
            )
            body += render_gauge(
                "stackdemo_dead_letters",
                "Messages the workers could not handle, kept for inspection.",
                held,
            )
            body += render_gauge(
                "stackdemo_dead_letters_moved",
                "Messages ever moved to the dead letters (a counter in Redis).",
                int(total or 0),
            )
        self.set_header("Content-Type", METRICS_CONTENT_TYPE)
        self.finish(body)


class NotFoundHandler(BaseHandler):
    metric_name = "not_found"

    def prepare(self) -> None:
        super().prepare()
        raise HTTPError(404)
