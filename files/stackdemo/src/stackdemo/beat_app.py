"""Beat Celery app: ``celery -A stackdemo.beat_app beat``."""

from stackdemo.apps import create_beat_app
from stackdemo.config import load_config

app = create_beat_app(load_config())
