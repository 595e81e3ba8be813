"""The Redis port on a real kernel: the allowed client gets in with its credentials, others are dropped.

Each Redis VM enforces this with the backend its inventory asks for (vm1: nftables), and carries
that backend's rules only.
"""

import re
import shlex

from stackcheck import redis_cli

REDIS_PORT = 6379
OTHER_BACKEND = {"nftables": "iptables", "iptables": "nftables"}

# Connects to ADDRESS:PORT from SOURCE; prints connected, timeout or refused.
PROBE = """
import socket, sys
source, address, port, timeout = sys.argv[1:]
s = socket.socket()
s.settimeout(float(timeout))
s.bind((source, 0))
try:
    s.connect((address, int(port)))
    print("connected")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"""


def probe(vm, source, address, port, timeout):
    args = shlex.join([source, address, str(port), str(timeout)])
    return vm.host.check_output(f"python3 -c {shlex.quote(PROBE)} {args}")


def nft_table(vm):
    return vm.host.run("nft list table inet stack_firewall")


def iptables_chain(vm):
    return vm.host.run("command -v iptables >/dev/null && iptables -w -L STACK-FIREWALL -v -n -x")


def dropped_packets(vm):
    """Packets the Redis port's drop rule has counted so far."""
    if vm.firewall_backend == "nftables":
        match = re.search(rf"dport {REDIS_PORT} counter packets (\d+) bytes \d+ drop", nft_table(vm).stdout)
    else:
        match = re.search(rf"^\s*(\d+)\s+\d+\s+DROP\s.*dpt:{REDIS_PORT}\b", iptables_chain(vm).stdout, re.M)
    assert match, f"no drop rule for port {REDIS_PORT} in the {vm.firewall_backend} rules"
    return int(match.group(1))


def test_rules_file_and_unit_of_the_expected_backend(redis_vm):
    backend = redis_vm.firewall_backend
    assert redis_vm.host.file(f"/etc/stack-firewall/rules.{backend}").exists
    assert not redis_vm.host.file(f"/etc/stack-firewall/rules.{OTHER_BACKEND[backend]}").exists
    unit = redis_vm.host.service("stack-firewall")
    assert unit.is_enabled
    assert unit.is_running


def test_live_rules_allow_the_clients_only(redis_vm, client_vm):
    outsider = client_vm.vars["kernel_vm_outsider_address"]
    nft, iptables = nft_table(redis_vm), iptables_chain(redis_vm)
    if redis_vm.firewall_backend == "nftables":
        assert nft.rc == 0, nft.stderr
        assert client_vm.address in nft.stdout
        assert outsider not in nft.stdout
        assert iptables.rc != 0, "a STACK-FIREWALL iptables chain is loaded too"
    else:
        assert iptables.rc == 0, iptables.stderr
        assert re.search(rf"RETURN\s.*\s{re.escape(client_vm.address)}\s.*dpt:{REDIS_PORT}", iptables.stdout)
        assert outsider not in iptables.stdout
        assert redis_vm.host.run("iptables -w -C INPUT -j STACK-FIREWALL").rc == 0
        assert nft.rc != 0, "the nftables table stack_firewall is loaded too"


def test_redis_listens_on_loopback_and_the_vm_network_only(redis_vm):
    listening = redis_vm.host.check_output(f"ss -Htln 'sport = :{REDIS_PORT}'")
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()}
    assert addresses == {"127.0.0.1", redis_vm.address}


def test_client_reaches_redis_with_its_credentials(client_vm, worker_url):
    result = redis_cli(client_vm.host, worker_url, "PING")
    assert result.stdout.strip() == "PONG", result.stdout + result.stderr


def test_client_with_a_wrong_password_is_refused(client_vm, worker_url):
    result = redis_cli(client_vm.host, worker_url, "PING", user="celery-worker", password="x" * 32)
    assert "WRONGPASS" in result.stdout + result.stderr


def test_allowed_source_connects(redis_vm, client_vm):
    assert probe(client_vm, client_vm.address, redis_vm.address, REDIS_PORT, 20) == "connected"


def test_source_outside_the_allow_list_is_dropped(redis_vm, client_vm):
    outsider = client_vm.vars["kernel_vm_outsider_address"]
    # The outsider address works on the VM-only network (SSH is not filtered): a timeout on the
    # Redis port below is the firewall's doing, not a routing problem.
    assert probe(client_vm, outsider, redis_vm.address, 22, 20) == "connected"
    before = dropped_packets(redis_vm)
    assert probe(client_vm, outsider, redis_vm.address, REDIS_PORT, 5) == "timeout"
    assert dropped_packets(redis_vm) > before
