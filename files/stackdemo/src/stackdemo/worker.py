"""Worker-side wiring that makes a hard crash cost a retry, not a task."""

import functools
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
from celery.worker.request import Request

from stackdemo import sentinel
from stackdemo.broker import (
    Channel,
    last_pop_reply,
    mark_live,
    node_transport_options,
    resolve_sentinel_urls_to,
    sentinel_channels,
)

log = logging.getLogger(__name__)


class ConnectionLossSafeRequest(Request):
    """A task stopped because the broker connection was lost records nothing.

    Celery stops every unacknowledged late-ack task when its connection is
    lost (worker_cancel_long_running_tasks_on_connection_loss: the message
    comes back) and stores RETRY for it from the main process. With Redis
    away that store blocks the main process for the result retries (~12 s)
    and then fails, the request is not marked cancelled, and the stopped
    child is taken for a revoke: REVOKED is stored once Redis is back and the
    returning copy is skipped as finished (lost). With Redis back already,
    RETRY overwrites a SUCCESS the child stored just before, and the copy runs
    a second time. The returning message is the only record needed.
    """

    def cancel(self, pool: Any, signal: Any = None, emit_retry: bool = True) -> None:
        super().cancel(pool, signal, emit_retry=False)


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


# What a monitor may ask a worker: read-only inspect commands. `conf` and
# `report` (settings), the memory dumps and every control command (shutdown,
# revoke, rate_limit, pool_grow, add_consumer...) are refused: whoever may
# publish on the pidbox could otherwise stop or reconfigure every worker.
READ_ONLY_COMMANDS = frozenset(
    {
        "ping",
        "stats",
        "active",
        "scheduled",
        "reserved",
        "registered",
        "active_queues",
        "query_task",
        "revoked",
        "clock",
        # Send a heartbeat event now: how an event monitor (Flower, celery
        # events) finds the workers as it starts.
        "heartbeat",
    }
)


REFUSED_COMMAND = "refused: this worker answers read-only inspect commands only"


def _refuse(name: str) -> Any:
    def refuse(state: Any, **arguments: Any) -> dict[str, str]:
        log.warning("remote command %r refused: read-only remote control", name)
        # The asker gets an answer, not a timeout.
        return {"error": REFUSED_COMMAND}

    return refuse


class ReadOnlyRemoteControl(bootsteps.StartStopStep):
    """The worker's remote control runs READ_ONLY_COMMANDS and refuses the others."""

    requires = ("celery.worker.consumer.control:Control",)

    def start(self, consumer: Any) -> None:
        control = consumer.blueprint.steps.get("celery.worker.consumer.control.Control")
        if control is None:  # remote control off
            return
        node = control.box.node
        node.handlers = {
            name: handler if name in READ_ONLY_COMMANDS else _refuse(name)
            for name, handler in node.handlers.items()
        }


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
        conf = self._consumer.app.conf
        url = conf.broker_url
        try:
            if sentinel.is_sentinel(url):
                # The primary the Sentinels name now, as the consumer would find.
                client = sentinel.sync_master(url, conf.broker_transport_options)
            else:
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


def _drop_old_primary(backend: Any) -> Any:
    """MasterWatch callback: shut this process's connections to the old primary.

    ``backend``: the result backend of the thread that runs tasks (Celery's is
    thread-local, so the watch's own thread would get another one).
    """

    def on_change(old: tuple[str, int], new: tuple[str, int]) -> None:
        dropped = sum(channel.drop_connections_to(old) for channel in sentinel_channels)
        # Its client and pool are made on first use.
        client = getattr(backend, "__dict__", {}).get("client")
        if client is not None:
            dropped += sentinel.drop_connections(client.connection_pool, old)
        log.warning("Dropped %d connection(s) to the old primary", dropped)

    return on_change


_master_watch: dict[str, sentinel.MasterWatch] = {}


def _watch_master(app: Celery) -> None:
    url = app.conf.broker_url
    if not sentinel.is_sentinel(url) or "watch" in _master_watch:
        return
    options = app.conf.broker_transport_options
    _master_watch["watch"] = sentinel.MasterWatch(
        url, options, _drop_old_primary(app.backend)
    ).start()


class SentinelMasterWatch(bootsteps.StartStopStep):
    """Leave a primary the Sentinels replaced, in the worker's main process."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, consumer: Any) -> None:
        _watch_master(consumer.app)


def _watch_master_in_pool_process(app: Celery, **_: Any) -> None:
    # A prefork child stores results and publishes on its own connections; the
    # parent's watch (a thread, not inherited) cannot see them. What the child
    # inherited belongs to the parent.
    _master_watch.clear()
    sentinel_channels.clear()
    _watch_master(app)


def _use_node_unacked_keys(sender: str, conf: Any, **_: Any) -> None:
    conf.broker_transport_options = {
        **conf.broker_transport_options,
        **node_transport_options(sender),
    }


CELERY_REQUEST = Task.Request


def _use_connection_loss_safe_requests(app: Celery, **_: Any) -> None:
    # Per task, whatever its base class: a user's app may build its tasks on
    # a class of its own. A task with a Request class of its own keeps it.
    for task in app.tasks.values():
        if task.Request == CELERY_REQUEST:
            task.Request = ConnectionLossSafeRequest


def install(app: Celery) -> None:
    """Give a worker app the transport, consumer steps and request class above."""
    if sentinel.is_sentinel(app.conf.broker_url):
        app.conf.broker_transport = "stackdemo.broker:SentinelTransport"
        resolve_sentinel_urls_to(app.conf.broker_transport)
    else:
        app.conf.broker_transport = "stackdemo.broker:Transport"
    app.conf.worker_consumer = "stackdemo.broker:Consumer"
    app.steps["consumer"].add(RestoreOrphans)
    app.steps["consumer"].add(ConsumerWatchdog)
    if app.conf.worker_enable_remote_control:
        app.steps["consumer"].add(ReadOnlyRemoteControl)
    signals.celeryd_init.connect(_use_node_unacked_keys, weak=False)
    # Sent once the worker imported the app's task modules, before it consumes.
    signals.worker_init.connect(
        functools.partial(_use_connection_loss_safe_requests, app), weak=False
    )
    if sentinel.is_sentinel(app.conf.broker_url):
        app.steps["consumer"].add(SentinelMasterWatch)
        signals.worker_process_init.connect(
            functools.partial(_watch_master_in_pool_process, app), weak=False
        )
