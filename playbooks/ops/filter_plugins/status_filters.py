"""Filters of the status runbook: raw readings in, one readable table out."""

import datetime

INFO_FIELDS = (
    "redis_version",
    "valkey_version",
    "role",
    "used_memory",
    "maxmemory",
    "aof_enabled",
    "aof_rewrite_in_progress",
    "aof_last_bgrewrite_status",
    "aof_last_write_status",
    "rdb_last_save_time",
    "connected_clients",
    "blocked_clients",
    "connected_slaves",
    "uptime_in_seconds",
    "master_host",
    "master_link_status",
)


def status_redis_info(text):
    """The fields of INFO the table shows, from redis-cli's text reply."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key in INFO_FIELDS:
            values[key] = value
    return values


def status_units(statuses):
    """systemd's properties of each unit, cut to what an operator reads first."""

    def processes(status):
        # Unknown where the cgroup has no task accounting (cgroup v1 containers).
        value = str(status.get("TasksCurrent", ""))
        return value if value.isdigit() else None

    return [
        {
            "unit": status.get("Id", "?"),
            "state": f"{status.get('ActiveState', '?')}/{status.get('SubState', '?')}",
            "since": status.get("ActiveEnterTimestamp", ""),
            "restarts": int(status.get("NRestarts", 0) or 0),
            "pid": status.get("MainPID", "?"),
            "tasks": processes(status),
        }
        for status in statuses
    ]


def _metric(text, name):
    for line in (text or "").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return line.rsplit(" ", 1)[1]
    return "?"


def status_web_ports(health_results, metrics_results):
    """Per web port: the health answer and the waits it holds."""
    ports = []
    for health, metrics in zip(health_results, metrics_results, strict=True):
        content = metrics.get("content", "")
        ports.append(
            {
                "port": health.get("item"),
                "health": health.get("status", -1),
                "waits": _metric(content, "stackdemo_result_waits_in_flight"),
                "subscriber": _metric(content, "stackdemo_result_subscriber_connected"),
            }
        )
    return ports


def _mb(value):
    try:
        return f"{int(value) / 1048576:.0f} MB"
    except (TypeError, ValueError):
        return "?"


def _when(epoch):
    try:
        return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return "?"


def _redis_lines(redis, firewall):
    info, broker = redis["info"], redis["broker"]
    limit = "no limit" if info.get("maxmemory") in (None, "0") else _mb(info.get("maxmemory"))
    version = info.get("valkey_version") or info.get("redis_version", "?")
    aof = "on" if info.get("aof_enabled") == "1" else "OFF"
    role = info.get("role", "?")
    if role == "slave":
        role = f"replica of {info.get('master_host', '?')} (link {info.get('master_link_status', '?')})"
    lines = [
        f"  redis {version}: {role}, replicas {info.get('connected_slaves', '0')}, "
        f"up {int(info.get('uptime_in_seconds', 0)) // 3600} h, firewall {firewall}",
        f"    memory {_mb(info.get('used_memory'))} of {limit}; clients {info.get('connected_clients', '?')}"
        f" ({info.get('blocked_clients', '?')} waiting for a message)",
        f"    AOF {aof}, last write {info.get('aof_last_write_status', '?')}, last rewrite "
        f"{info.get('aof_last_bgrewrite_status', '?')}"
        f"{' (rewriting now)' if info.get('aof_rewrite_in_progress') == '1' else ''}; "
        f"last RDB save {_when(info.get('rdb_last_save_time'))}",
        "    queues: "
        + (", ".join(f"{queue} {depth}" for queue, depth in sorted(broker["queues"].items())) or "none"),
    ]
    for label, held in (("unacked", broker["unacked"]), ("in flight", broker["in_flight"])):
        # Keys are PREFIX@POOL@HOST[@LIST]: the node is what the operator needs.
        nodes = ", ".join(f"{key.split('@', 1)[1]} {count}" for key, count in sorted(held.items()))
        if held:
            lines.append(f"    {label}: {nodes}")
    lines.append(
        f"    dead letters: {broker['dead_letters']} held, {broker['dead_letters_moved']} ever moved"
    )
    return lines


def status_sentinel_master(text):
    """SENTINEL MASTER's reply (field and value on alternate lines) as a mapping."""
    lines = [line.strip() for line in text.splitlines()]
    return dict(zip(lines[0::2], lines[1::2], strict=False))


def _sentinel_lines(master):
    flags = master.get("flags", "?")
    return [
        f"  sentinel: primary {master.get('ip', '?')}:{master.get('port', '?')} ({flags}), "
        f"{master.get('num-slaves', '?')} replica(s), "
        f"{master.get('num-other-sentinels', '?')} other Sentinel(s), "
        f"quorum {master.get('quorum', '?')}"
    ]


def status_table(hosts, hostvars):
    """One block per host, as one text: the tiers it serves, Redis first."""
    out = []
    for host in hosts:
        facts = hostvars[host]
        blocks = []
        if "status_redis" in facts:
            blocks += _redis_lines(facts["status_redis"], facts.get("status_firewall", "?"))
        if "status_sentinel" in facts:
            blocks += _sentinel_lines(facts["status_sentinel"])
        for pool in facts.get("status_pools", []):
            processes = f", {pool['tasks']} processes" if pool["tasks"] else ""
            blocks.append(
                f"  {pool['unit']}: {pool['state']} since {pool['since'] or '-'}, "
                f"{pool['restarts']} restarts, pid {pool['pid']}{processes}"
            )
        for port in facts.get("status_web", []):
            healthy = "healthy" if port["health"] == 200 else f"UNHEALTHY ({port['health']})"
            blocks.append(
                f"  web :{port['port']}: {healthy}, {port['waits']} waits in flight, "
                f"result subscriber {'up' if port['subscriber'] == '1' else 'DOWN'}"
            )
        if blocks:
            out.append(f"{host}:")
            out.extend(blocks)
    return "\n".join(out)


class FilterModule:
    def filters(self):
        return {
            "status_redis_info": status_redis_info,
            "status_sentinel_master": status_sentinel_master,
            "status_units": status_units,
            "status_web_ports": status_web_ports,
            "status_table": status_table,
        }
