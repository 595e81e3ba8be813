"""Worker-side wiring that makes a hard crash cost a retry, not a task."""

import logging
from typing import Any

from celery import Celery, Task, bootsteps, signals
from celery.exceptions import Ignore
from celery.states import READY_STATES

from stackdemo.broker import Channel, node_transport_options

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
        restored = channel.restore_orphans()
        if restored:
            log.warning(
                "Requeued %d message(s) left unacknowledged in %s",
                restored,
                channel.unacked_key,
            )


def _use_node_unacked_keys(sender: str, conf: Any, **_: Any) -> None:
    conf.broker_transport_options = {
        **conf.broker_transport_options,
        **node_transport_options(sender),
    }


def install(app: Celery) -> None:
    """Give a worker app the transport, consumer and task class above."""
    app.conf.broker_transport = "stackdemo.broker:Transport"
    app.conf.worker_consumer = "stackdemo.broker:Consumer"
    app.steps["consumer"].add(RestoreOrphans)
    signals.celeryd_init.connect(_use_node_unacked_keys, weak=False)
