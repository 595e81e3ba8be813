"""Monitoring tools' Celery app: ``celery -A stackdemo.monitor_app flower``.

It holds the monitoring user's credentials only and imports no task code: Flower
learns task names from the workers' events. Its /metrics gains the depth of
every queue the configuration names (stackdemo.queue_metrics).
"""

from stackdemo.apps import create_monitor_app
from stackdemo.config import load_config
from stackdemo.queue_metrics import register_queue_depth

_config = load_config()
# Built at import: the celery command only imports this module and takes `app`.
app = create_monitor_app(_config)
register_queue_depth(app, _config.monitor.queues)
