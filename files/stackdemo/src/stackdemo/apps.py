"""Celery app factories: the worker's, and the web's result-less producer."""

import importlib
import logging
import time

from celery import Celery

from stackdemo.broker import (
    PUBLISH_REPLICA_ACK_TIMEOUT_OPTION,
    PUBLISH_REPLICA_ACKS_OPTION,
    resolve_sentinel_urls_to,
)
from stackdemo.config import Config, ConfigError
from stackdemo.settings import (
    beat_settings,
    monitor_settings,
    producer_settings,
    worker_settings,
)
from stackdemo.worker import install

log = logging.getLogger(__name__)

# A failover's publish retries: PUBLISH_RETRIES, PUBLISH_RETRY_PAUSE s apart,
# 10 s at least. A new primary refuses writes (NOREPLICAS, retried like a lost
# connection) until a replica is in sync with it: after a switchover that can
# take a full copy, which Redis starts 5 s after it is asked for.
PUBLISH_RETRIES = 40
PUBLISH_RETRY_PAUSE = 0.25


def _publish_retry_pause(exc: BaseException, interval: float) -> None:
    # kombu calls it with 0 after a failed publish, and with the interval it
    # is about to sleep after a failed connection attempt.
    if not interval:
        time.sleep(PUBLISH_RETRY_PAUSE)


def create_worker_app(config: Config) -> Celery:
    """The demo's worker app, or the user's own (config.celery_app) made one."""
    if config.celery_app:
        app = _import_app(config.celery_app)
    else:
        app = Celery("stackdemo")
        app.conf.imports = ("stackdemo.tasks",)
    # The stack's settings win over the app's own: they are the contract
    # with Redis (users, queues, transport) and what keeps tasks from loss.
    app.conf.update(worker_settings(config))
    if "Task" in vars(app):
        # Its base task class was built at import (app.Task used there): the
        # tasks keep it, and only Celery's own redelivery check (a SUCCESS
        # already stored) applies to them.
        log.warning(
            "%s built its task class at import: redelivered tasks are skipped "
            "only when they already succeeded",
            config.celery_app,
        )
        app.conf.worker_deduplicate_successful_tasks = True
    else:
        app.task_cls = "stackdemo.worker:RedeliverySafeTask"
    install(app)
    return app


def _import_app(reference: str) -> Celery:
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"celery_app {reference!r}: cannot import {module_name} ({exc}); "
            "is the project installed in the stack's virtualenv?"
        ) from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, Celery):
        raise ConfigError(
            f"celery_app {reference!r}: {module_name} has no Celery app named "
            f"{attribute!r}"
        )
    return app


def create_producer_app(config: Config) -> Celery:
    # No result backend on purpose: Celery's Redis backend would open a
    # synchronous pub/sub subscription for every task sent (on_task_call).
    app = Celery("stackdemo-web", set_as_current=False)
    settings = producer_settings(config)
    # A dead broker must fail a submit, not park an executor thread forever.
    settings["broker_transport_options"].update(
        socket_timeout=10, socket_connect_timeout=5
    )
    settings["broker_connection_timeout"] = 5
    if config.sentinel is not None:
        # kombu's Sentinel transport with our channel, only so that the web's
        # primary watch can find and drop the producer's connections to a
        # replaced primary (stackdemo.broker.sentinel_channels); publishing is
        # kombu's own.
        settings["broker_transport"] = "stackdemo.broker:SentinelProducerTransport"
        resolve_sentinel_urls_to(settings["broker_transport"])
        settings["broker_transport_options"].update(
            {
                PUBLISH_REPLICA_ACKS_OPTION: config.web.publish_replica_acks,
                PUBLISH_REPLICA_ACK_TIMEOUT_OPTION: (
                    config.web.publish_replica_ack_timeout_ms
                ),
            }
        )
        # A switchover (playbooks/ops/switchover.yml) closes the connections
        # whose writes it held paused; until the Sentinels' SENTINEL MASTERS
        # (what redis-py asks) names the new primary, about a second after
        # GET-MASTER-ADDR-BY-NAME does, a reconnect may still reach the old
        # one, now a replica: READONLY, which redis-py raises as a connection
        # error. Celery's default (3 retries, ~0.4 s; and kombu stops after one
        # reconnect, see SentinelProducerTransport) gives up before that;
        # these ~3 s do not. A READONLY or a paused write cut off was never
        # run, so retrying it cannot duplicate a task.
        settings["task_publish_retry_policy"] = {
            "max_retries": PUBLISH_RETRIES,
            "interval_start": 0,
            "interval_step": 0.25,
            "interval_max": 0.5,
            # kombu sleeps only while a connection fails to open; a publish
            # that fails on a connection that opened is retried at once.
            "errback": _publish_retry_pause,
        }
    app.conf.update(settings)
    return app


def create_beat_app(config: Config) -> Celery:
    # Beat only publishes; like the web it must not subscribe to results, which the
    # worker's Redis ACL user is not granted.
    app = Celery("stackdemo-beat", set_as_current=False)
    app.conf.update(producer_settings(config))
    app.conf.update(beat_settings(config))
    return app


def create_monitor_app(config: Config) -> Celery:
    """Flower's and `celery events`' app: the monitoring user, no task code."""
    if config.monitor is None:
        raise ConfigError(
            "not a monitoring configuration: it has no 'monitor' object (queues)"
        )
    app = Celery("stackdemo-monitor")
    app.conf.update(monitor_settings(config))
    return app
