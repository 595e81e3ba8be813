"""The project's tasks, using what Celery apps commonly use.

Chains, groups, chords (their body sums the header's results), a failing
task, retries with a countdown, a rate limit and a task that sends another:
each touches Redis in its own way (chord counters, group results, the
broker from inside a worker), which the tiers' ACL grants must cover.
"""

from typing import Any

from exampleproj.celery import app


@app.task(name="exampleproj.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="exampleproj.total")
def total(values: list[int]) -> int:
    return sum(values)


@app.task(name="exampleproj.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(name="exampleproj.retried", bind=True, max_retries=3)
def retried(self: Any, failures: int) -> int:
    """Fails `failures` times, retried one second later each time."""
    if self.request.retries < failures:
        raise self.retry(countdown=1)
    return self.request.retries


@app.task(name="exampleproj.limited", rate_limit="20/s")
def limited(x: int) -> int:
    return x


@app.task(name="exampleproj.spawn")
def spawn(x: int) -> str:
    """Sends add(x, 1) from inside the worker: the child's id."""
    return add.delay(x, 1).id


@app.task(name="exampleproj.ordinal")
def ordinal(number: int) -> str:
    """A dependency of the project's own lock at work: 42 -> '42nd'."""
    # Imported here: only the deployed project has it installed, not the app tests.
    import inflection

    return inflection.ordinalize(number)
