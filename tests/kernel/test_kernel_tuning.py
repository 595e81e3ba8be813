"""Redis' host tuning on a real kernel: live, persistent across reboots, and Redis does not complain."""

import re
import time

import pytest

SYSCTLS = {
    "vm.overcommit_memory": 1,
    "net.core.somaxconn": 4096,
    "net.ipv4.tcp_max_syn_backlog": 4096,
}
# Redis' start-up warnings about the kernel (overcommit, THP, the listen backlog).
KERNEL_WARNING = re.compile(
    r"overcommit|transparent huge pages|somaxconn|tcp.backlog|tcp_max_syn_backlog", re.IGNORECASE
)


@pytest.mark.parametrize(("name", "expected"), SYSCTLS.items())
def test_sysctl_is_live(redis_vm, name, expected):
    assert redis_vm.host.sysctl(name) == expected


def test_sysctls_are_persisted_for_every_boot(redis_vm):
    content = redis_vm.host.file("/etc/sysctl.d/60-redis.conf").content_string
    persisted = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition("=") for line in content.splitlines())
        if key.strip() and not key.startswith("#")
    )
    assert persisted == {name: str(value) for name, value in SYSCTLS.items()}


@pytest.mark.parametrize("knob", ["enabled", "defrag"])
def test_transparent_huge_pages_are_never(redis_vm, knob):
    content = redis_vm.host.file(f"/sys/kernel/mm/transparent_hugepage/{knob}").content_string
    assert "[never]" in content, content


def test_huge_pages_unit_runs_at_boot(redis_vm):
    unit = redis_vm.host.service("redis-transparent-hugepage")
    assert unit.is_enabled
    assert unit.is_running


def test_redis_runs_and_starts_at_boot(redis_vm):
    unit = redis_vm.host.service("redis-server")
    assert unit.is_enabled
    assert unit.is_running


def test_redis_log_of_this_boot_has_no_kernel_warnings(redis_vm):
    log = redis_vm.host.check_output("journalctl --boot --unit redis-server.service --output cat --no-pager")
    assert "Ready to accept connections" in log, log
    assert [line for line in log.splitlines() if KERNEL_WARNING.search(line)] == []


def test_no_unit_failed(any_vm):
    assert any_vm.host.check_output("systemctl list-units --failed --plain --no-legend") == ""


def test_reboot_really_happened(redis_vm, reboots):
    previous, recorded_at = reboots(redis_vm)
    if not previous:
        pytest.skip("no reboot yet in this run")
    boot_id = redis_vm.host.file("/proc/sys/kernel/random/boot_id").content_string.strip()
    assert boot_id not in previous
    # The kernel has been up for less time than has passed since the last reboot was requested.
    uptime = float(redis_vm.host.file("/proc/uptime").content_string.split()[0])
    assert uptime < time.time() - recorded_at + 5
