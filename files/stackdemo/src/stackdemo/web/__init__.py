"""Tornado front: submits tasks and awaits their results without blocking."""
