"""Filters shared by the stack's roles: one implementation of each contract between them.

Pure functions with no Ansible import, so the app's tests and the unit tests load this file
directly and check the same code the roles run.
"""

from urllib.parse import quote

_URL_SCHEMES = ("redis", "rediss", "sentinel")


def redis_url(host, port, user, password, db, scheme="redis"):
    """redis://user:password@host:port/db with credentials percent-encoded, IPv6 in brackets.

    A list of hosts gives one URL each, joined by ';' (Celery's syntax for several Sentinels).
    """
    if isinstance(host, (list, tuple)):
        if not host:
            raise ValueError("redis_url: the list of hosts is empty")
        return ";".join(redis_url(item, port, user, password, db, scheme) for item in host)
    if scheme not in _URL_SCHEMES:
        raise ValueError(f"redis_url: scheme must be one of {_URL_SCHEMES}, got {scheme!r}")
    port, db = int(port), int(db)
    if not 1 <= port <= 65535:
        raise ValueError(f"redis_url: port {port} is not between 1 and 65535")
    if db < 0:
        raise ValueError(f"redis_url: database {db} is negative")
    host = str(host)
    if not host:
        raise ValueError("redis_url: the host is empty")
    netloc_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    credentials = ""
    if user or password:
        credentials = f"{quote(str(user or ''), safe='')}:{quote(str(password or ''), safe='')}@"
    return f"{scheme}://{credentials}{netloc_host}:{port}/{db}"


def systemd_directives(settings):
    """Lines of a unit section from a mapping; a list value repeats its directive.

    None removes a directive (a per-unit exception to a shared set); booleans become yes/no.
    """
    lines = []
    for key, value in settings.items():
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, bool):
                item = "yes" if item else "no"
            lines.append(f"{key}={item}")
    return "\n".join(lines)


def redis_queue_key_patterns(queues):
    """Key patterns of Celery queues on kombu's Redis transport: the list Q and its priorities Q:N."""
    patterns = []
    for queue in sorted(set(queues)):
        patterns += [f"~{queue}", f"~{queue}:*"]
    return patterns


def redis_acl_grant_with(grant, *extras):
    """`grant` with each extra grant's lists appended (the worker's remote control, its events)."""
    for extra in extras:
        grant = {**grant, **{key: [*grant.get(key, []), *value] for key, value in extra.items()}}
    return grant


def redis_acl_rule(grant, queues, db=1):
    """ACL SETUSER rules (without user, on/off and password) of one tier's grant.

    grant: {queue_keys: bool, queue_read_keys: bool, keys: [patterns], read_keys: [patterns],
    channels: [patterns], commands: [names]}. Starts from nothing (resetkeys, resetchannels,
    -@all) and adds exactly the grant; read_keys and queue_read_keys may only be read (Redis 7
    %R~). "{db}" in a channel becomes the broker's database: kombu's broadcast channels are named
    after it, and Redis matches a PSUBSCRIBE pattern against the ACL's channel patterns literally.
    """
    keys = redis_queue_key_patterns(queues) if grant.get("queue_keys") else []
    if grant.get("queue_read_keys"):
        keys += [f"%R{pattern}" for pattern in redis_queue_key_patterns(queues)]
    keys += [f"~{pattern}" for pattern in grant.get("keys", [])]
    keys += [f"%R~{pattern}" for pattern in grant.get("read_keys", [])]
    channels = [f"&{pattern.replace('{db}', str(int(db)))}" for pattern in grant.get("channels", [])]
    commands = [f"+{command}" for command in grant["commands"]]
    return " ".join(["resetkeys", "resetchannels", *keys, *channels, "-@all", *commands])


class FilterModule:
    def filters(self):
        return {
            "redis_url": redis_url,
            "systemd_directives": systemd_directives,
            "redis_acl_rule": redis_acl_rule,
            "redis_acl_grant_with": redis_acl_grant_with,
        }
