"""Testinfra fixtures shared by every Molecule scenario.

Hosts are looked up by inventory group, so the same tests run on an all-in-one host and on a
cluster. They are reached the way Ansible reaches them: by SSH with the inventory's address, user
and key, over one multiplexed connection per host (about 15 ms a command, against 150 ms for
`podman exec`); a host whose inventory says Podman is reached through Podman.
What a test expects (units, ports, pools, flavor) comes from the inventory or from the local
facts the roles record under /etc/ansible/facts.d, never from literals.
"""

import json
import os
import sys

import pytest
import testinfra
from stackcheck import direct_config, redis_endpoint
from testinfra.utils.ansible_runner import AnsibleRunner


@pytest.fixture(scope="session")
def inventory():
    return AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])


SSH_OPTIONS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"


def _connect(inventory, name):
    host = _host_of(inventory, name)
    host.inventory_name = name
    return host


def _host_of(inventory, name):
    variables = inventory.get_variables(name)
    if variables.get("ansible_connection", "ssh").endswith("podman"):
        return testinfra.get_host(f"podman://{name}")
    user, address, key = ssh_target(inventory, name)
    return testinfra.get_host(f"ssh://{user}@{address}", ssh_identity_file=key, ssh_extra_args=SSH_OPTIONS)


def ssh_target(inventory, name):
    """(user, address, private key) Ansible reaches a host with."""
    variables = inventory.get_variables(name)
    key = variables.get("ansible_ssh_private_key_file") or variables.get("ansible_private_key_file")
    # The lab inventory names its key relative to itself; Molecule's names an absolute path.
    key = key.replace("{{ inventory_dir }}", os.path.dirname(os.path.abspath(inventory.inventory_file)))
    return variables.get("ansible_user", "root"), variables.get("ansible_host", name), key


def ssh_argv(inventory, name):
    """An ssh command line to a host, for tools that run commands themselves."""
    user, address, key = ssh_target(inventory, name)
    return ["ssh", "-i", key, *SSH_OPTIONS.split(), f"{user}@{address}"]


@pytest.fixture(scope="session")
def group(inventory):
    """group("web") -> testinfra hosts of that inventory group."""
    cache = {}

    def hosts_of(name):
        if name not in cache:
            cache[name] = [_connect(inventory, h) for h in inventory.get_hosts(name)]
        return cache[name]

    return hosts_of


# Read again by every test: a failover moves the primary, a rotation changes the tiers' passwords.
@pytest.fixture
def redis_host(group, inventory, worker_hosts, worker_config):
    """The Redis primary: the one redis host, or the one the Sentinels name."""
    hosts = group("redis")
    if len(hosts) == 1:
        return hosts[0]
    address = redis_endpoint(worker_config["broker_url"])[0]
    for host in hosts:
        if service_address(inventory, host, host.inventory_name) == address:
            return host
    raise AssertionError(f"the primary {address} is no redis host of the inventory")


@pytest.fixture(scope="session")
def worker_hosts(group):
    return group("celery_workers")


@pytest.fixture(scope="session")
def web_hosts(group):
    return group("web")


def read_json(host, path):
    return json.loads(host.file(path).content_string)


@pytest.fixture
def web_config(web_hosts):
    """The web front's rendered config: the credentials the stack really uses, its URLs pointing
    at the current primary (sentinel:// URLs are resolved through the Sentinels)."""
    return direct_config(web_hosts[0], read_json(web_hosts[0], "/etc/stackdemo/web.json"))


@pytest.fixture
def worker_config(worker_hosts):
    return direct_config(worker_hosts[0], read_json(worker_hosts[0], "/etc/stackdemo/worker.json"))


@pytest.fixture(scope="session")
def secrets_dir(inventory):
    """Passwords the lab inventory generated on the controller, beside Molecule's inventory."""
    return os.path.join(os.path.dirname(inventory.inventory_file), ".secrets")


def local_fact(host, name):
    """A local fact a role recorded on `host` (stack_redis, stack_celery_worker, stack_web)."""
    return read_json(host, f"/etc/ansible/facts.d/{name}.fact")


@pytest.fixture
def admin(secrets_dir, redis_fact):
    """(user, password) of the Redis admin ACL user."""
    with open(os.path.join(secrets_dir, "redis-admin")) as secret:
        password = secret.read().strip()
    return redis_fact["users"]["admin"], password


@pytest.fixture
def redis_fact(redis_host):
    """What the redis role deployed: flavor, service (unit), cli, port, bind."""
    return local_fact(redis_host, "stack_redis")


@pytest.fixture
def redis_unit(redis_fact):
    return redis_fact["service"]


@pytest.fixture(scope="session")
def pool_names(inventory):
    """The worker pools the inventory asks for (celery_worker_pools of the first worker host)."""
    pools = inventory.get_variables(inventory.get_hosts("celery_workers")[0])["celery_worker_pools"]
    return [pool["name"] for pool in pools]


def service_address(inventory, host, name):
    """The address a host serves on: its inventory value, else its default route's source."""
    address = inventory.get_variables(name).get("stack_service_address")
    if address:
        return address
    return host.check_output("ip -4 -o route get 192.0.2.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'")


def pytest_configure(config):
    config.addinivalue_line("markers", "disruptive: fails the Redis primary over; runs after the others")
    config.addinivalue_line("markers", "after_faults: checks what the disruptive tests left; runs last")


def _runs_a_project_of_its_own():
    inventory = AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
    workers = inventory.get_hosts("celery_workers")
    return bool(workers) and bool(inventory.get_variables(workers[0]).get("celery_worker_app"))


def pytest_collection_modifyitems(config, items):
    # Hosts running a user's project get test_byo.py (and the monitoring tests, which need no
    # demo); the others test the demo, which those hosts do not have (its tasks, /add, the chaos
    # suite's load).
    if "MOLECULE_INVENTORY_FILE" in os.environ:
        byo = _runs_a_project_of_its_own()
        byo_files = {"test_byo.py", "test_monitoring.py"} if byo else {"test_byo.py"}
        deselected = [item for item in items if (item.path.name in byo_files) != byo]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if item not in deselected]
    # The failover faults change which host is primary: every other test runs before them.
    items.sort(
        key=lambda item: (
            item.get_closest_marker("after_faults") is not None,
            item.get_closest_marker("disruptive") is not None,
        )
    )


def pytest_terminal_summary(terminalreporter):
    # The failover figures belong in every log, passing or not: they are what the HA tests measure.
    rows = getattr(sys.modules.get("test_ha"), "FIGURES", [])
    if rows:
        terminalreporter.section("Redis failover under load")
        for row in rows:
            terminalreporter.write_line(json.dumps(row))
