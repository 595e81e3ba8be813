"""Tasks of an app that is not the demo, using what Celery apps commonly use.

Chains, groups, chords (their body sums the header's results), a failing
task, retries with a countdown, a rate limit and a task that sends another:
each touches Redis in its own way (chord counters, group results, the
broker from inside a worker), which the tiers' ACL grants must cover.
"""

from typing import Any

from celery import shared_task


@shared_task(name="canvas.add")
def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="canvas.total")
def total(values: list[int]) -> int:
    return sum(values)


@shared_task(name="canvas.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@shared_task(name="canvas.retried", bind=True, max_retries=3)
def retried(self: Any, failures: int) -> int:
    """Fails `failures` times, retried one second later each time."""
    if self.request.retries < failures:
        raise self.retry(countdown=1)
    return self.request.retries


@shared_task(name="canvas.limited", rate_limit="20/s")
def limited(x: int) -> int:
    return x


@shared_task(name="canvas.spawn")
def spawn(x: int) -> str:
    """Sends add(x, 1) from inside the worker: the child's id."""
    return add.delay(x, 1).id
