"""Queue depth per Celery queue, as Prometheus metrics, read at each scrape."""

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from celery import Celery
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from stackdemo.config import PRIORITY_STEPS, priority_lists

log = logging.getLogger(__name__)


class QueueDepthCollector:
    """Messages waiting in each queue (all priorities); whether Redis answered.

    One LLEN per list, in one round trip, on a connection kept between scrapes
    (kombu's, so a sentinel:// broker leads to the current primary). A failed
    read drops the connection, reports stackdemo_celery_broker_up 0 and no
    depths: a scrape never fails and never reports a stale number.
    """

    def __init__(self, app: Celery, queues: Iterable[str]) -> None:
        self._app = app
        self._queues = sorted(set(queues))
        self._connection: Any = None
        self._lock = threading.Lock()

    def describe(self) -> list:
        # Registering must not read Redis (prometheus_client calls describe).
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "stackdemo_celery_broker_up",
            "1 if Redis answered the last read of the queue depths, else 0.",
        )
        waiting = GaugeMetricFamily(
            "stackdemo_celery_queue_messages",
            "Messages waiting in a Celery queue, every priority, not yet delivered.",
            labels=["queue"],
        )
        try:
            depths = self._read()
        except Exception as exc:  # any broker failure is a 0, never a failed scrape
            log.warning("queue depths: Redis did not answer: %r", exc)
            self._drop_connection()
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for queue, depth in depths.items():
                waiting.add_metric([queue], depth)
        yield up
        yield waiting

    def _read(self) -> dict[str, int]:
        with self._lock:
            if self._connection is None:
                self._connection = self._app.connection_for_read()
            if not self._connection.connected:
                self._connection.connect()
            client = self._connection.default_channel.client
            pipe = client.pipeline(transaction=False)
            for queue in self._queues:
                for name in priority_lists(queue):
                    pipe.llen(name)
            lengths = iter(pipe.execute())
        return {
            queue: sum(next(lengths) for _ in PRIORITY_STEPS) for queue in self._queues
        }

    def _drop_connection(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # already broken: nothing more to release
                log.debug("queue depths: closing the old connection failed")


def register_queue_depth(
    app: Celery, queues: Iterable[str], registry: CollectorRegistry = REGISTRY
) -> QueueDepthCollector:
    collector = QueueDepthCollector(app, queues)
    registry.register(collector)
    return collector
