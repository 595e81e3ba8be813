"""Worker Celery app: ``celery -A stackdemo.celery_app worker``."""

from stackdemo.apps import create_worker_app
from stackdemo.config import load_config

# Built at import: the celery command only imports this module and takes `app`.
app = create_worker_app(load_config())
