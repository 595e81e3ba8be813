"""Demo Celery + Tornado application deployed by the stackdemo Ansible roles."""

__version__ = "0.1.0"
