"""Every benchmark against a converged lab; writes the figures as JSON.

  bench/run.py [--inventory inventory/lab] [--out bench/results.json] [--quick]

P1  a no-change re-run of site.yml against a play of as many pings (bench/rerun.sh).
P2  throughput and latency at several client counts: through the front (GET /add), Celery
    called directly, and the seed's front (one blocking .get() per request).
P3  N concurrent awaited requests on one web process: answered, memory, drain time.

The load runs on the lab's web host with the app's own virtualenv (the hosts' firewall
admits only the stack's own clients to Redis); it shares the host's cores with the stack,
as a client on the same machine would.
"""

import argparse
import json
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = "/opt/stackdemo/venv/bin/python"
SEED_PORT = 10091
# Root's own directory on the host: the scripts run as root.
REMOTE_DIR = "/root/stack-bench"
CLIENTS = [1, 10, 50, 100, 200]
SEED_CLIENTS = [1, 10, 50]
WAITS = [1000, 5000, 10000]
# Components whose CPU is read around each P2 run; the load generator reports its own.
COMPONENTS = ["web", "worker main", "worker children", "redis", "journald", "seed front", "load"]


class Host:
    """The web host of the lab, reached over SSH as the playbooks reach it."""

    def __init__(self, inventory: Path) -> None:
        hosts = yaml.safe_load((inventory / "hosts.yml").read_text())["all"]
        name = next(iter(hosts["children"]["web"]["hosts"]))
        groups = hosts["children"]
        if any(name not in (groups[group]["hosts"] or {}) for group in ("redis", "celery_workers")):
            # P3 stores results as a worker does and CPU is read per component on one host.
            sys.exit(f"bench/run.py needs an all-in-one lab; {name} is not also a Redis and worker host")
        lab = hosts["children"]["lab"]
        self.address = lab["hosts"][name]["ansible_host"]
        key = inventory / ".secrets" / "lab-ssh-key"
        self.ssh = [
            "ssh",
            "-i",
            str(key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            f"root@{self.address}",
        ]

    def run(self, command: str, **kwargs) -> str:
        done = subprocess.run([*self.ssh, command], capture_output=True, text=True, **kwargs)
        if done.returncode:
            sys.exit(f"on {self.address}: {command}\n{done.stderr[-3000:]}")
        return done.stdout

    def put(self, local: Path, remote: str) -> None:
        subprocess.run(
            [*self.ssh, f"cat > {shlex.quote(remote)}"],
            input=local.read_bytes(),
            check=True,
        )

    def load(self, *args: str | int) -> dict:
        argv = " ".join(shlex.quote(str(a)) for a in args)
        return json.loads(self.run(f"{VENV_PYTHON} {REMOTE_DIR}/hostload.py {argv}").splitlines()[-1])

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each component (exited worker children included)."""
        listing = self.run(
            "getconf CLK_TCK; "
            "systemctl show --property MainPID --value stackdemo-web@10001; "
            "systemctl show --property MainPID --value celery-worker@default; "
            "for p in /proc/[0-9]*; do "
            'printf "%s\\t%s\\n" "$(cat $p/stat 2>/dev/null)" "$(tr "\\0" " " < $p/cmdline 2>/dev/null)"; '
            "done"
        ).splitlines()
        ticks, web_pid, worker_pid = (int(value) for value in listing[:3])
        used = dict.fromkeys(COMPONENTS, 0.0)
        for line in listing[3:]:
            stat, _, cmdline = line.partition("\t")
            if ")" not in stat:
                continue
            pid = int(stat.split()[0])
            fields = stat.rsplit(")", 1)[1].split()
            ppid = int(fields[1])
            own, waited = (
                (int(fields[11]) + int(fields[12])) / ticks,
                (int(fields[13]) + int(fields[14])) / ticks,
            )
            if pid == web_pid:
                used["web"] += own
            elif pid == worker_pid:
                used["worker main"] += own
                used["worker children"] += waited
            elif ppid == worker_pid:
                used["worker children"] += own
            elif re.search(r"redis-server|valkey-server", cmdline):
                used["redis"] += own
            elif "systemd-journald" in cmdline:
                used["journald"] += own
            elif "seed_baseline.py" in cmdline:
                used["seed front"] += own
        return used


def machine(host: Host) -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": int(subprocess.check_output(["nproc"], text=True)),
        "memory_gib": round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "host_os": host.run(". /etc/os-release && echo $PRETTY_NAME").strip(),
        "redis": host.run(
            "(redis-server --version || valkey-server --version) 2>/dev/null"
            " | sed -E 's/^(\\S+) server v=(\\S+).*/\\1 \\2/'"
        ).strip(),
        "python": host.run(f"{VENV_PYTHON} -V").strip(),
        "somaxconn": int(host.run("cat /proc/sys/net/core/somaxconn")),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def p1_rerun(inventory: Path, runs: int) -> dict:
    """farm-bench's medians for site.yml re-run (A) against the ping play (B)."""
    out = subprocess.run(
        [str(ROOT / "bench" / "rerun.sh"), str(inventory)],
        env={**_env(), "RUNS": str(runs)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    print(out, file=sys.stderr)
    tasks = int(re.search(r"ok=(\d+)", out).group(1))

    def figure(label: str) -> dict:
        low, median, high = re.search(
            rf"^{re.escape(label)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.MULTILINE
        ).groups()
        return {"min": float(low), "median": float(median), "max": float(high)}

    return {
        "tasks": tasks,
        "site_rerun_wall_s": figure("A wall s"),
        "pings_wall_s": figure("B wall s"),
        "site_rerun_cpu_s": figure("A cpu s"),
        "ratio_wall": figure("A/B wall"),
    }


def _env() -> dict:
    import os

    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
    }


def p2_throughput(host: Host, seconds: float, clients: list[int], kinds: set[str]) -> dict:
    front_url = f"http://{host.address}:10001/add?x=1&y=2"
    series: dict[str, list] = {"front": [], "direct": [], "seed": []}

    def measured(kind: str, *args: str | int) -> dict:
        before = host.cpu_seconds()
        row = host.load(*args)
        after = host.cpu_seconds()
        after["load"] = row.pop("load_cpu_s")
        row["cpu_percent"] = {
            name: round(100 * (after[name] - before[name]) / row["seconds"], 1) for name in COMPONENTS
        }
        print(f"P2 {kind} clients={row['clients']}: {row['per_second']}/s", file=sys.stderr)
        return row

    for count in clients:
        if "front" in kinds:
            series["front"].append(
                measured("front", "http", front_url, "--clients", count, "--seconds", seconds)
            )
        if "direct" in kinds:
            series["direct"].append(measured("direct", "direct", "--clients", count, "--seconds", seconds))
    if "seed" not in kinds:
        return series
    host.run(
        "systemctl reset-failed stack-bench-seed 2>/dev/null; "
        f"systemd-run --unit stack-bench-seed {VENV_PYTHON} {REMOTE_DIR}/seed_baseline.py {SEED_PORT} "
        f"&& for i in $(seq 50); do {VENV_PYTHON} -c "
        f"'import socket; socket.create_connection((\"127.0.0.1\", {SEED_PORT}))' "
        "2>/dev/null && break; sleep 0.2; done"
    )
    try:
        seed_url = f"http://127.0.0.1:{SEED_PORT}/add?x=1&y=2"
        for count in [c for c in SEED_CLIENTS if c <= max(clients)]:
            series["seed"].append(
                measured("seed", "http", seed_url, "--clients", count, "--seconds", seconds)
            )
    finally:
        host.run("systemctl stop stack-bench-seed")
    return series


def p3_waits(host: Host, counts: list[int]) -> list[dict]:
    rows = []
    for count in counts:
        # A fresh process per size, so each peak is its own.
        host.run("systemctl restart stackdemo-web@10001")
        pid = host.run("systemctl show --property MainPID --value stackdemo-web@10001").strip()
        base = f"http://{host.address}:10001"
        for _ in range(100):
            if "200" in host.run(f"curl -s -o /dev/null -w '%{{http_code}}' {base}/healthz || true"):
                break
            time.sleep(0.2)
        row = host.load("waits", base, "--count", count, "--web-pid", pid)
        print(f"P3 waits={count}: {row['answered']} answered", file=sys.stderr)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inventory", type=Path, default=ROOT / "inventory" / "lab")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--quick", action="store_true", help="short runs: check the harness, not the stack")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=["p1", "front", "direct", "seed", "p3"],
        help="run these parts again and keep the other figures of --out",
    )
    args = parser.parse_args()
    parts = set(args.only or ["p1", "front", "direct", "seed", "p3"])
    host = Host(args.inventory)
    host.run(f"install -d -m 0700 {REMOTE_DIR}")
    for name in ("hostload.py", "seed_baseline.py"):
        host.put(ROOT / "bench" / name, f"{REMOTE_DIR}/{name}")
    results = json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
    results["machine"] = machine(host)
    if "p1" in parts:
        results["p1"] = p1_rerun(args.inventory, 1 if args.quick else 3)
    kinds = parts & {"front", "direct", "seed"}
    if kinds:
        p2 = p2_throughput(host, 3 if args.quick else 15, [1, 10] if args.quick else CLIENTS, kinds)
        results.setdefault("p2", {}).update({kind: p2[kind] for kind in kinds})
    if "p3" in parts:
        results["p3"] = p3_waits(host, [500] if args.quick else WAITS)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
