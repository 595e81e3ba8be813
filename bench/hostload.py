"""Load generator for the benchmarks, run on a lab host with the app's virtualenv.

  hostload.py http URL --clients N --seconds S
      N keep-alive clients, each sending GET URL again as soon as it is answered.
  hostload.py direct --clients N --seconds S
      Celery without the front: add(i, 1) with N tasks outstanding, results awaited.
  hostload.py waits BASE --count N --web-pid P
      N connections at once, each awaiting GET BASE/api/tasks/<id>?wait=W for an id of its
      own; once all are open, the web's memory is read, every result is stored and
      published as a worker does, and the time until the last answer is measured.

Reads credentials from the deployed configuration files; prints one JSON object.
"""

import argparse
import asyncio
import collections
import json
import resource
import statistics
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

WEB_CONFIG = "/etc/stackdemo/web.json"
WORKER_CONFIG = "/etc/stackdemo/worker.json"
ADD = "stackdemo.tasks.add"
CONNECTION_ERRORS = (OSError, asyncio.IncompleteReadError, ValueError)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def latency_summary(latencies: list[float]) -> dict[str, float | None]:
    """Milliseconds: median and tail percentiles."""
    ms = sorted(value * 1000 for value in latencies)

    def at(fraction: float) -> float | None:
        return round(ms[min(len(ms) - 1, int(fraction * len(ms)))], 2) if ms else None

    return {
        "p50_ms": round(statistics.median(ms), 2) if ms else None,
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": round(ms[-1], 2) if ms else None,
    }


def _count(counter: dict, key: object) -> None:
    counter[str(key)] = counter.get(str(key), 0) + 1


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, target: str
) -> tuple[int, bytes]:
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n"
    writer.write(request.encode())
    await writer.drain()
    return await _request_reply(reader)


async def _keep_alive_client(host: str, port: int, target: str, deadline: float, out: dict) -> None:
    reader = writer = None
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            started = time.monotonic()
            status, _ = await _request(reader, writer, host, target)
        except CONNECTION_ERRORS as exc:
            _count(out["errors"], type(exc).__name__)
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.1)
            continue
        if status == 200:
            out["latencies"].append(time.monotonic() - started)
        else:
            _count(out["statuses"], status)
    if writer is not None:
        writer.close()


def _rate_report(clients: int, elapsed: float, latencies: list[float], **extra) -> dict:
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "answered": len(latencies),
        "per_second": round(len(latencies) / elapsed, 1),
        **latency_summary(latencies),
        **extra,
    }


async def run_http(url: str, clients: int, seconds: float) -> dict:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    out: dict = {"latencies": [], "statuses": {}, "errors": {}}
    started = time.monotonic()
    await asyncio.gather(
        *(
            _keep_alive_client(parts.hostname, parts.port or 80, target, started + seconds, out)
            for _ in range(clients)
        )
    )
    return _rate_report(
        clients,
        time.monotonic() - started,
        out["latencies"],
        other_statuses=out["statuses"],
        errors=out["errors"],
    )


def _load_config(path: str):
    from stackdemo.config import load_config

    return load_config(path)


def run_direct(clients: int, seconds: float) -> dict:
    """The same task through Celery alone: the ceiling the front is measured against."""
    from stackdemo.apps import create_producer_app

    config = _load_config(WEB_CONFIG)
    app = create_producer_app(config)
    app.conf.result_backend = config.result_backend
    add = app.signature(ADD)
    outstanding: collections.deque = collections.deque()
    latencies: list[float] = []
    failures = 0
    started = time.monotonic()
    deadline = started + seconds
    sent = 0
    while True:
        while len(outstanding) < clients and time.monotonic() < deadline:
            # As the front sends: the workers declare the queues (the web user may not).
            outstanding.append((time.monotonic(), add.apply_async((sent, 1), declare=[])))
            sent += 1
        if not outstanding:
            break
        sent_at, result = outstanding.popleft()
        try:
            result.get(timeout=30)
            latencies.append(time.monotonic() - sent_at)
        except Exception:  # noqa: BLE001 - a failure is counted, not fatal
            failures += 1
    return _rate_report(clients, time.monotonic() - started, latencies, failures=failures)


def _rss_kb(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def _publish_results(ids: list[str]) -> None:
    """Store and announce each result exactly as Celery's Redis backend does."""
    import redis

    config = _load_config(WORKER_CONFIG)
    client = redis.Redis.from_url(config.result_backend)
    pipe = client.pipeline(transaction=False)
    done = datetime.now(UTC).isoformat()
    for number, task_id in enumerate(ids):
        key = f"celery-task-meta-{task_id}"
        meta = json.dumps(
            {
                "status": "SUCCESS",
                "result": number,
                "traceback": None,
                "children": [],
                "date_done": done,
                "task_id": task_id,
            }
        )
        pipe.setex(key, 600, meta).publish(key, meta)
        if number % 1000 == 999:
            pipe.execute()
    pipe.execute()
    client.close()


async def _waiter(host: str, port: int, target: str, state: dict) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        state["sent"] += 1
        status, body = await _request_reply(reader)
        writer.close()
    except CONNECTION_ERRORS as exc:
        _count(state["errors"], type(exc).__name__)
        return
    state["finished_at"].append(time.monotonic())
    if status == 200 and json.loads(body).get("state") == "SUCCESS":
        state["answered"] += 1
    else:
        _count(state["statuses"], status)


async def _request_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = int((await reader.readuntil(b"\r\n")).split()[1])
    length = 0
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, (await reader.readexactly(length) if length else b"")


async def run_waits(base: str, count: int, wait: int, web_pid: int) -> dict:
    parts = urlsplit(base)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    state: dict = {
        "sent": 0,
        "answered": 0,
        "statuses": {},
        "errors": {},
        "finished_at": [],
    }
    rss_before = _rss_kb(web_pid)
    started = time.monotonic()
    tasks = [
        asyncio.create_task(_waiter(parts.hostname, parts.port or 80, f"/api/tasks/{i}?wait={wait}", state))
        for i in ids
    ]
    # Every request sent and none answered yet: the web holds them all.
    while state["sent"] + sum(state["errors"].values()) < count:
        await asyncio.sleep(0.05)
    open_seconds = time.monotonic() - started
    await asyncio.sleep(1)
    rss_held = _rss_kb(web_pid)
    released = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, _publish_results, ids)
    await asyncio.gather(*tasks)
    last = max(state["finished_at"], default=released)
    return {
        "waits": count,
        "sent": state["sent"],
        "answered": state["answered"],
        "open_seconds": round(open_seconds, 2),
        "drain_seconds": round(last - released, 2),
        "rss_before_mb": round(rss_before["VmRSS"] / 1024, 1),
        "rss_held_mb": round(rss_held["VmRSS"] / 1024, 1),
        "rss_peak_mb": round(_rss_kb(web_pid)["VmHWM"] / 1024, 1),
        "other_statuses": state["statuses"],
        "errors": state["errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    http = sub.add_parser("http")
    http.add_argument("url")
    direct = sub.add_parser("direct")
    for mode in (http, direct):
        mode.add_argument("--clients", type=int, required=True)
        mode.add_argument("--seconds", type=float, default=10)
    waits = sub.add_parser("waits")
    waits.add_argument("base")
    waits.add_argument("--count", type=int, required=True)
    waits.add_argument("--wait", type=int, default=30)
    waits.add_argument("--web-pid", type=int, required=True)
    args = parser.parse_args()
    _raise_fd_limit()
    if args.mode == "http":
        result = asyncio.run(run_http(args.url, args.clients, args.seconds))
    elif args.mode == "direct":
        result = run_direct(args.clients, args.seconds)
    else:
        result = asyncio.run(run_waits(args.base, args.count, args.wait, args.web_pid))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["load_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
