"""A worker of another app's tasks under the stack's worker settings.

``celery -A canvas_worker worker``: the demo's factory gives the settings
(late acks, in-flight delivery, JSON, result backend) and the tasks are
canvas_tasks', as a user's own project gets them.
"""

from stackdemo.apps import create_worker_app
from stackdemo.config import load_config

app = create_worker_app(load_config())
app.conf.imports = (*app.conf.imports, "canvas_tasks")
