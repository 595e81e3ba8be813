"""The project's Celery app, as the worker's ``celery_app`` names it: exampleproj.celery:app.

Written as projects usually are: an app object, its task modules, and settings
of its own, some of which the stack overrides when it runs the app (pickle
accepted, an early ack, a broker of its own): the stack's settings are the
contract with Redis and what keeps tasks from being lost.
"""

from celery import Celery

app = Celery("exampleproj", include=["exampleproj.tasks"])
app.conf.update(
    broker_url="redis://127.0.0.1:1/0",
    task_serializer="pickle",
    accept_content=["pickle", "json"],
    task_acks_late=False,
)
