"""Celery app factories: the worker's, and the web's result-less producer."""

from celery import Celery

from stackdemo.config import Config
from stackdemo.settings import beat_settings, producer_settings, worker_settings
from stackdemo.worker import install


def create_worker_app(config: Config) -> Celery:
    app = Celery("stackdemo", task_cls="stackdemo.worker:RedeliverySafeTask")
    app.conf.update(worker_settings(config))
    app.conf.imports = ("stackdemo.tasks",)
    install(app)
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
    app.conf.update(settings)
    return app


def create_beat_app(config: Config) -> Celery:
    # Beat only publishes; like the web it must not subscribe to results, which the
    # worker's Redis ACL user is not granted.
    app = Celery("stackdemo-beat", set_as_current=False)
    app.conf.update(producer_settings(config))
    app.conf.update(beat_settings(config))
    return app
