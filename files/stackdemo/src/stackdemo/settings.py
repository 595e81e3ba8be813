"""Celery settings derived from the configuration file."""

from typing import Any

from stackdemo import sentinel
from stackdemo.config import PRIORITY_SEP, PRIORITY_STEPS, Config

# Custom key in app.conf through which the worker's tasks read the file.
ADD_DELAY_SETTING = "stackdemo_add_delay_seconds"


def sentinel_transport_options(config: Config) -> dict[str, Any]:
    """kombu's and Celery's Sentinel options, and failure detection (none without)."""
    if config.sentinel is None:
        return {}
    return {
        "master_name": config.sentinel.master_name,
        "sentinel_kwargs": sentinel.sentinel_kwargs(config.sentinel),
        **sentinel.socket_options(),
        # kombu drops a pop connection whose reply is overdue by this much
        # (plus the pop's own 1 s), checked as often: a frozen or partitioned
        # primary costs the consumer 6-11 s instead of 26-51 s. redis-py also
        # PINGs a pooled connection idle this long before using it.
        "health_check_interval": 5,
    }


def broker_transport_options(config: Config) -> dict[str, Any]:
    return {
        # Must exceed the longest countdown/ETA plus run time, or Redis hands
        # the unacknowledged message to another worker.
        "visibility_timeout": config.visibility_timeout,
        # One Redis list per level so 0-9 are all distinct; kombu pops the
        # lists in this order, so with Redis priority 0 is served first.
        "priority_steps": list(PRIORITY_STEPS),
        "sep": PRIORITY_SEP,
        "queue_order_strategy": "priority",
        **sentinel_transport_options(config),
    }


def producer_settings(config: Config) -> dict[str, Any]:
    """What any process that publishes tasks needs; no result backend."""
    return {
        "broker_url": config.broker_url,
        "broker_transport_options": broker_transport_options(config),
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle message in the queue must never be loaded.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_default_queue": config.default_queue,
        "task_routes": {
            name: dict(route) for name, route in config.task_routes.items()
        },
    }


def worker_settings(config: Config) -> dict[str, Any]:
    settings = producer_settings(config)
    settings.update(
        {
            "result_backend": config.result_backend,
            "result_backend_transport_options": {
                "visibility_timeout": config.visibility_timeout,
                **{
                    key: value
                    for key, value in sentinel_transport_options(config).items()
                    if key in ("master_name", "sentinel_kwargs")
                },
            },
            "result_expires": config.result_expires,
            # A result that cannot be stored (Redis restarting, a primary failing
            # over) is retried, with backoff, for about 25 s: Celery would
            # otherwise record the task as failed and ack its message, and the
            # result, the task's only trace, would be nowhere.
            "result_backend_always_retry": True,
            "result_backend_max_retries": 15,
            "result_backend_base_sleep_between_retries_ms": 100,
            "result_backend_max_sleep_between_retries_ms": 2000,
            # Ack after the run so a crashed worker's task is redelivered.
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            # With late acks a cancelled task is redelivered anyway; letting it
            # run on after the broker connection is lost would run it twice.
            "worker_cancel_long_running_tasks_on_connection_loss": True,
            "worker_prefetch_multiplier": 1,
            "task_track_started": True,
            # Off unless asked for (config.remote_control): the pidbox needs a
            # pub/sub channel and reply queues that the worker's Redis user
            # gets only then, and answers read-only inspect commands only
            # (stackdemo.worker.ReadOnlyRemoteControl).
            "worker_enable_remote_control": config.remote_control,
            # Task events (received, started, succeeded...) for Flower and
            # `celery events`, published on the celeryev channel the worker's
            # Redis user may then publish on; the pool's command line adds
            # heartbeats, which tell a monitor the worker is alive.
            "worker_send_task_events": config.events,
            # One stderr handler for journald, which adds its own timestamps.
            "worker_hijack_root_logger": True,
            "worker_log_color": False,
            "worker_log_format": "%(levelname)s/%(processName)s %(message)s",
            "worker_task_log_format": (
                "%(levelname)s/%(processName)s %(task_name)s[%(task_id)s]: %(message)s"
            ),
            ADD_DELAY_SETTING: config.add_delay_seconds,
        }
    )
    if config.sentinel is not None:
        # Celery's backend takes its connection options from these settings,
        # not from the transport options: a result stored on a frozen primary
        # fails after 5 s and Celery retries it on the primary Sentinel names.
        settings.update(
            {
                "redis_socket_timeout": sentinel.REPLY_TIMEOUT,
                "redis_socket_connect_timeout": sentinel.CONNECT_TIMEOUT,
                "redis_socket_keepalive": True,
            }
        )
    return settings


def monitor_settings(config: Config) -> dict[str, Any]:
    """The monitoring tools' app: the broker side only, no result backend."""
    settings = producer_settings(config)
    # A scrape or a page must not hang on a Redis that does not answer
    # (Flower's queue page reads these two options as well).
    settings["broker_transport_options"].update(
        socket_timeout=2, socket_connect_timeout=2
    )
    settings["broker_connection_timeout"] = 2
    return settings


def beat_settings(config: Config) -> dict[str, Any]:
    """Periodic tasks for celery beat, which only publishes (no result backend)."""
    return {
        "beat_schedule": {
            name: {
                "task": entry.task,
                "schedule": float(entry.every_seconds),
                "args": list(entry.args),
                "kwargs": dict(entry.kwargs),
            }
            for name, entry in config.beat_schedule.items()
        }
    }
