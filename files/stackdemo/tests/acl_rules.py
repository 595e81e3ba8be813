"""The Redis ACL rules the integration tests run under: the deployment's own.

The grants are read from the stack role (its vars file) and turned
into rules by the same filter code the redis role renders users.acl with, so
the suite checks exactly what is deployed. The suite starts redis-server with
only these users (the default user is off) and its last module asserts that
``ACL LOG`` recorded no denial.
"""

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parents[3] / "roles" / "stack"


def _load_filters():
    path = ROLE / "filter_plugins" / "stack_filters.py"
    spec = importlib.util.spec_from_file_location("stack_filters", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_filters = _load_filters()
GRANTS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())[
    "stack_redis_acl_grants"
]


def web_rule(password: str, queues: Iterable[str]) -> str:
    return f"on >{password} {_filters.redis_acl_rule(GRANTS['web'], queues)}"


def worker_rule(
    password: str,
    queues: Iterable[str],
    remote_control: bool = False,
    events: bool = False,
) -> str:
    # As the stack role composes it: the extras' keys, channels and commands appended.
    grant = _filters.redis_acl_grant_with(
        GRANTS["worker"],
        GRANTS["worker_remote_control"] if remote_control else {},
        GRANTS["worker_events"] if events else {},
    )
    return f"on >{password} {_filters.redis_acl_rule(grant, queues, db=1)}"


def monitor_rule(password: str, queues: Iterable[str]) -> str:
    return f"on >{password} {_filters.redis_acl_rule(GRANTS['monitor'], queues, db=1)}"
