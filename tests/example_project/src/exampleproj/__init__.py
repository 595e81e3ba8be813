"""An example of a user's own Celery project, deployed onto the stack."""
