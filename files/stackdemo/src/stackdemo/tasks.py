"""The tasks the workers run; names are part of the web API's allow-list."""

import math
import time
from typing import Any

from celery import shared_task

from stackdemo.settings import ADD_DELAY_SETTING


def _require_number(value: Any, name: str) -> None:
    # Other producers than the web can reach the queue; fail clearly on junk.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite")


@shared_task(name="stackdemo.tasks.add", bind=True)
def add(self: Any, x: float, y: float) -> float:
    _require_number(x, "x")
    _require_number(y, "y")
    delay = self.app.conf.get(ADD_DELAY_SETTING) or 0
    if delay:
        time.sleep(delay)
    return x + y


@shared_task(name="stackdemo.tasks.sleep_then_echo")
def sleep_then_echo(value: Any, seconds: float) -> Any:
    _require_number(seconds, "seconds")
    if seconds < 0:
        raise ValueError("seconds must be >= 0")
    time.sleep(seconds)
    return value
