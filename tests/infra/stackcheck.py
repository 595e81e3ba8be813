"""Small helpers the Testinfra modules share: URLs from rendered configs, commands on hosts."""

import json
import shlex
from urllib.parse import unquote, urlsplit


def redis_endpoint(url):
    """(host, port, user, password, db) of a redis:// URL from a rendered config."""
    parts = urlsplit(url)
    return (
        parts.hostname,
        parts.port or 6379,
        unquote(parts.username or ""),
        unquote(parts.password or ""),
        int(parts.path.lstrip("/") or 0),
    )


def redis_cli(host, url, *command, user=None, password=None, db=None):
    """Run redis-cli on `host` against the server of `url`; credentials from the URL unless given."""
    address, port, url_user, url_password, url_db = redis_endpoint(url)
    args = ["redis-cli", "-h", address, "-p", str(port), "-n", str(url_db if db is None else db)]
    if user is None:
        user, password = url_user, url_password
    if user:
        args += ["--user", user, "--no-auth-warning"]
    env = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    return host.run(env + shlex.join(args + [str(c) for c in command]))


def http_get(host, url, timeout=60):
    """GET `url` from `host` with its own Python; returns (status, parsed JSON body)."""
    script = (
        "import json, sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen(sys.argv[1], timeout={timeout})\n"
        "    print(json.dumps([r.status, r.read().decode()]))\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(json.dumps([e.code, e.read().decode()]))\n"
    )
    result = host.check_output(f"python3 -c {shlex.quote(script)} {shlex.quote(url)}")
    status, body = json.loads(result)
    return status, json.loads(body) if body else None
