"""The application tier as deployed: task API, routing, countdown/expires, JSON-only workers."""

import json
import re
import shlex
import uuid

from stackcheck import http_get, http_request, redis_cli, web_url


def submit(host, name, **body):
    status, answer = http_request(host, web_url(host, f"/api/tasks/{name}"), body)
    assert status == 202, answer
    return answer["task_id"]


def wait_for(host, task_id, seconds=20):
    status, answer = http_get(host, web_url(host, f"/api/tasks/{task_id}?wait={seconds}"))
    assert status == 200, answer
    return answer


def test_submit_then_await_by_status_url(web_hosts):
    host = web_hosts[0]
    task_id = submit(host, "stackdemo.tasks.add", args=[20, 22])
    answer = wait_for(host, task_id)
    assert (answer["state"], answer["result"]) == ("SUCCESS", 42)


def test_countdown_holds_the_task_back(web_hosts):
    host = web_hosts[0]
    task_id = submit(host, "stackdemo.tasks.add", args=[1, 1], countdown=4)
    status, early = http_get(host, web_url(host, f"/api/tasks/{task_id}"))
    assert (status, early["state"]) == (200, "PENDING")
    assert wait_for(host, task_id)["result"] == 2


def test_an_expired_task_is_revoked_not_run(web_hosts):
    host = web_hosts[0]
    task_id = submit(host, "stackdemo.tasks.add", args=[1, 2], countdown=3, expires=1)
    assert wait_for(host, task_id)["state"] == "REVOKED"


def _pool_of_queue(inventory, queue):
    pools = inventory.get_variables(inventory.get_hosts("celery_workers")[0])["celery_worker_pools"]
    return [pool["name"] for pool in pools if queue in pool["queues"]]


def test_routed_task_runs_on_its_own_pool(web_hosts, worker_hosts, inventory, pool_names):
    routes = inventory.get_variables(inventory.get_hosts("celery_workers")[0])["celery_worker_task_routes"]
    routed_pools = _pool_of_queue(inventory, routes["stackdemo.tasks.sleep_then_echo"]["queue"])
    assert len(routed_pools) == 1 and len(pool_names) > 1
    host = web_hosts[0]
    marker = f"routed-{uuid.uuid4()}"
    task_id = submit(host, "stackdemo.tasks.sleep_then_echo", args=[marker, 0])
    assert wait_for(host, task_id)["result"] == marker
    journals = [
        (pool, w.check_output(f"journalctl -u celery-worker@{pool} --no-pager -o cat"))
        for w in worker_hosts
        for pool in pool_names
    ]
    assert [pool for pool, log in journals if task_id in log] == routed_pools


def test_unknown_task_and_bad_json_are_client_errors(web_hosts):
    host = web_hosts[0]
    status, answer = http_request(host, web_url(host, "/api/tasks/os.system"), {"args": ["id"]})
    assert status in (403, 404) and answer["error"]
    status, answer = http_request(host, web_url(host, "/api/tasks/stackdemo.tasks.add"), {"args": "nope"})
    assert status == 400 and answer["error"]


def test_countdown_beyond_the_visibility_timeout_is_refused(web_hosts, web_config):
    host = web_hosts[0]
    too_far = web_config["visibility_timeout"] + 60
    status, answer = http_request(
        host, web_url(host, "/api/tasks/stackdemo.tasks.add"), {"args": [1, 1], "countdown": too_far}
    )
    assert status == 400 and "visibility" in answer["error"].lower()


def _refusals(worker, pool):
    journal = f"journalctl -u celery-worker@{pool} --no-pager -o cat"
    return int(worker.check_output(f"{journal} | grep -c 'untrusted content' || true") or 0)


def test_a_pickle_message_is_refused_and_the_worker_stays_up(
    web_hosts, worker_hosts, worker_config, inventory
):
    pool = _pool_of_queue(inventory, worker_config["default_queue"])[0]
    task_id = str(uuid.uuid4())
    headers = {"lang": "py", "task": "stackdemo.tasks.add", "id": task_id, "root_id": task_id}
    headers.update({"parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None})
    message = {
        # A pickle of (("x", 1), {}, {}): it must never reach pickle.loads.
        "body": "gAJYAQAAAHhxAEsBhnEBfXECfXEDh3EELg==",
        "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": worker_config["default_queue"]},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    worker, web = worker_hosts[0], web_hosts[0]
    before = _refusals(worker, pool)
    queue = worker_config["default_queue"]
    pushed = redis_cli(worker, worker_config["broker_url"], "LPUSH", queue, json.dumps(message))
    assert pushed.stdout.strip().isdigit(), pushed.stdout + pushed.stderr
    # The queue is FIFO: once a later task has run, the worker has met the pickle message.
    assert wait_for(web, submit(web, "stackdemo.tasks.add", args=[3, 4]))["result"] == 7
    assert _refusals(worker, pool) > before
    assert worker.service(f"celery-worker@{pool}").is_running
    status, answer = http_get(web, web_url(web, f"/api/tasks/{task_id}"))
    assert (status, answer["state"]) == (200, "PENDING")  # dropped, never became a task


def test_health_and_metrics(web_hosts):
    host = web_hosts[0]
    status, answer = http_get(host, web_url(host, "/healthz"))
    assert (status, answer["broker"]) == (200, "ok")
    metrics = host.check_output(
        "python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' "
        + shlex.quote(web_url(host, "/metrics"))
    )
    assert "# TYPE" in metrics
    # Messages waiting in every queue the inventory routes to, and the process's own figures.
    config = json.loads(host.file("/etc/stackdemo/web.json").content_string)
    queues = {config["default_queue"]} | {route["queue"] for route in config.get("task_routes", {}).values()}
    for queue in queues:
        assert re.search(rf'^stackdemo_queue_messages{{queue="{re.escape(queue)}"}} \d+$', metrics, re.M)
    assert re.search(r"^process_resident_memory_bytes [1-9]\d*$", metrics, re.M)


def test_beat_runs_on_exactly_one_host_and_sends_its_schedule(worker_hosts):
    beat_hosts = [h for h in worker_hosts if h.service("celery-beat").is_running]
    assert len(beat_hosts) == 1
    host = beat_hosts[0]
    assert host.service("celery-beat").is_enabled
    assert {p.user for p in host.process.filter(comm="celery")} == {"celery-worker"}
    # The lab schedule sends every 10 s: a bounded wait for the first send, not a timing check.
    sent = host.run(
        "for i in $(seq 60); do journalctl -u celery-beat --no-pager -o cat"
        " | grep -q 'Sending due task lab-heartbeat' && exit 0; sleep 1; done; exit 1"
    )
    assert sent.rc == 0
