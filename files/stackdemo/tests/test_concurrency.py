"""Hundreds of requests awaiting results at once are all answered correctly."""

import asyncio
import json

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from helpers import wait_until

ECHO = "stackdemo.tasks.sleep_then_echo"


async def _fetch_all(base_url: str, paths: list[str]) -> list[tuple[int, dict]]:
    client = AsyncHTTPClient(force_instance=True, max_clients=len(paths))
    try:

        async def fetch(path: str) -> tuple[int, dict]:
            request = HTTPRequest(
                base_url + path, connect_timeout=60, request_timeout=120
            )
            resp = await client.fetch(request, raise_error=False)
            return resp.code, json.loads(resp.body or b"{}")

        return await asyncio.gather(*(fetch(path) for path in paths))
    finally:
        client.close()


def _metric(web, name: str) -> float:
    for line in web.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_500_concurrent_waits_on_delayed_tasks(web, redis_server):
    # Few tasks, many waiters each: waiters share one channel per task.
    task_ids = [web.submit(ECHO, args=[f"value-{i}", 1]) for i in range(5)]
    paths = [f"/api/tasks/{task_ids[i % 5]}?wait=30" for i in range(500)]
    answers = asyncio.run(_fetch_all(web.base_url, paths))
    for path, (code, body) in zip(paths, answers, strict=True):
        task_id = path.split("/")[3].split("?")[0]
        index = task_ids.index(task_id)
        assert code == 200, body
        assert body == {
            "task_id": task_id,
            "state": "SUCCESS",
            "result": f"value-{index}",
        }
    assert _metric(web, "stackdemo_result_waits_in_flight") == 0
    # Waiters are gone, so are the subscriptions, in the app and in Redis.
    assert _metric(web, "stackdemo_result_subscriptions") == 0
    admin = redis_server.client(0)
    channels = [f"celery-task-meta-{task_id}" for task_id in task_ids]
    wait_until(
        lambda: all(count == 0 for _, count in admin.pubsub_numsub(*channels)),
        "the web to unsubscribe",
    )


def test_300_concurrent_adds(web):
    # One task and one channel per request.
    paths = [f"/add?x={i}&y={2 * i}" for i in range(300)]
    answers = asyncio.run(_fetch_all(web.base_url, paths))
    for i, (code, body) in enumerate(answers):
        assert code == 200, body
        assert body["result"] == 3 * i
