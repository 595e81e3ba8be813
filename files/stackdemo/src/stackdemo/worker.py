"""Worker-side wiring that makes a hard crash cost a retry, not a task."""

import logging
import os
import signal
import threading
import time
from typing import Any

import redis
from celery import Celery, Task, bootsteps, signals
from celery.exceptions import Ignore
from celery.states import READY_STATES
from celery.worker import state as worker_state

from stackdemo.broker import (
    Channel,
    last_pop_reply,
    mark_live,
    node_transport_options,
)

log = logging.getLogger(__name__)


class RedeliverySafeTask(Task):
    """Skips a redelivered message whose task already has a final result.

    With late acks a worker can die after storing the result and before the
    ack; the message then comes back. Running it again would store a second
    result and repeat its side effects.
    """

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if (request.delivery_info or {}).get("redelivered") and request.id:
            status = self.backend.get_task_meta(request.id).get("status")
            if status in READY_STATES:
                log.warning(
                    "Task %s[%s] already finished (%s): redelivered copy skipped",
                    self.name,
                    request.id,
                    status,
                )
                raise Ignore()
        return super().__call__(*args, **kwargs)


class RestoreOrphans(bootsteps.StartStopStep):
    """Requeue what a dead predecessor of this node left unacknowledged.

    Runs at every consumer start, including reconnects: Celery drops its
    reserved messages when the connection is lost, since their delivery tags
    cannot be acked any more.
    """

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, consumer: Any) -> None:
        channel = consumer.connection.default_channel
        if not isinstance(channel, Channel):
            return
        mark_live(consumer.connection.transport)
        queues = consumer.app.amqp.queues.consume_from or consumer.app.amqp.queues
        in_flight, unacked = channel.restore_orphans(queues)
        if in_flight or unacked:
            log.warning(
                "Requeued %d message(s) left in flight and %d unacked in %s",
                in_flight,
                unacked,
                channel.unacked_key,
            )


STALL_SECONDS = 60
CHECK_SECONDS = 10


def consumer_stalled(
    now: float,
    last_reply: float,
    running: int,
    can_consume: bool,
    limit: float = STALL_SECONDS,
) -> bool:
    """No pop reply for too long, though the pool is idle or has a free slot."""
    return now - last_reply > limit and (running == 0 or can_consume)


class ConsumerWatchdog(bootsteps.StartStopStep):
    """Exit a pool whose consumer stopped consuming while Redis answers.

    An idle consumer gets a pop reply several times a second. kombu's event loop can
    lose its broker socket after a reconnect and then wait for ever with the
    pool looking healthy; systemd restarts the exited pool and its successor
    requeues what it held. A pool running tasks (kombu asks for no message while
    every slot is taken) or cut off from Redis is left alone.
    """

    requires = (RestoreOrphans,)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._consumer: Any = None
        self._thread: threading.Thread | None = None

    def start(self, consumer: Any) -> None:
        self._consumer = consumer
        last_pop_reply["at"] = time.monotonic()  # a full grace period per start
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name="consumer-watchdog", daemon=True
            )
            self._thread.start()

    def _can_consume(self) -> bool:
        try:
            return bool(self._consumer.task_consumer.channel.qos.can_consume())
        except Exception:  # reconnecting: no channel to judge
            return False

    def _broker_answers(self) -> bool:
        url = self._consumer.app.conf.broker_url
        try:
            client = redis.Redis.from_url(
                url, socket_timeout=5, socket_connect_timeout=5
            )
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def _watch(self) -> None:
        while True:
            time.sleep(CHECK_SECONDS)
            last = last_pop_reply["at"]
            running = len(worker_state.active_requests)
            if not consumer_stalled(
                time.monotonic(), last, running, self._can_consume()
            ):
                continue
            if not self._broker_answers():
                continue
            log.critical(
                "Consumer stalled: no pop reply for %.0f s while Redis answers;"
                " stopping so systemd starts this pool again",
                time.monotonic() - last,
            )
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(STALL_SECONDS)
            os._exit(70)


def _use_node_unacked_keys(sender: str, conf: Any, **_: Any) -> None:
    conf.broker_transport_options = {
        **conf.broker_transport_options,
        **node_transport_options(sender),
    }


def install(app: Celery) -> None:
    """Give a worker app the transport, consumer steps and task class above."""
    app.conf.broker_transport = "stackdemo.broker:Transport"
    app.conf.worker_consumer = "stackdemo.broker:Consumer"
    app.steps["consumer"].add(RestoreOrphans)
    app.steps["consumer"].add(ConsumerWatchdog)
    signals.celeryd_init.connect(_use_node_unacked_keys, weak=False)
