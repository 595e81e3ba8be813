"""Testinfra fixtures shared by every Molecule scenario.

Hosts are looked up by inventory group, so the same tests run on an all-in-one host and on a
cluster. Podman hosts are reached with testinfra's podman backend (an order of magnitude faster
than running every command through Ansible); others go through the Ansible backend.
"""

import json
import os

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner


@pytest.fixture(scope="session")
def inventory():
    return AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])


def _connect(inventory, name):
    connection = inventory.get_variables(name).get("ansible_connection", "ssh")
    if connection.endswith("podman"):
        return testinfra.get_host(f"podman://{name}")
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory.inventory_file}")


@pytest.fixture(scope="session")
def group(inventory):
    """group("web") -> testinfra hosts of that inventory group."""
    cache = {}

    def hosts_of(name):
        if name not in cache:
            cache[name] = [_connect(inventory, h) for h in inventory.get_hosts(name)]
        return cache[name]

    return hosts_of


@pytest.fixture(scope="session")
def redis_host(group):
    return group("redis")[0]


@pytest.fixture(scope="session")
def worker_hosts(group):
    return group("celery_workers")


@pytest.fixture(scope="session")
def web_hosts(group):
    return group("web")


def read_json(host, path):
    return json.loads(host.file(path).content_string)


@pytest.fixture(scope="session")
def web_config(web_hosts):
    """The web front's rendered config: the address and credentials the stack really uses."""
    return read_json(web_hosts[0], "/etc/stackdemo/web.json")


@pytest.fixture(scope="session")
def worker_config(worker_hosts):
    return read_json(worker_hosts[0], "/etc/stackdemo/worker.json")


@pytest.fixture(scope="session")
def secrets_dir(inventory):
    """Passwords the lab inventory generated on the controller, beside Molecule's inventory."""
    return os.path.join(os.path.dirname(inventory.inventory_file), ".secrets")


@pytest.fixture(scope="session")
def admin(secrets_dir):
    """(user, password) of the Redis admin ACL user."""
    with open(os.path.join(secrets_dir, "redis-admin")) as secret:
        return "stack-admin", secret.read().strip()


@pytest.fixture(scope="session")
def redis_unit(redis_host):
    """The server's unit: redis-server on Debian, redis on the RedHat family."""
    debian = redis_host.run("systemctl cat redis-server.service").rc == 0
    return "redis-server" if debian else "redis"
