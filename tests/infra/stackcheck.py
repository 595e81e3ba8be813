"""Small helpers the Testinfra modules share: URLs from rendered configs, commands on hosts."""

import json
import shlex
from urllib.parse import quote, unquote, urlsplit


def redis_cli_path(host):
    """The Redis CLI on `host`: the one its redis or redis_sentinel role recorded (valkey-cli where
    the distro ships Valkey), else redis-cli (a client host given the tools package for the tests)."""
    if not hasattr(host, "redis_cli_path"):
        host.redis_cli_path = "redis-cli"
        for fact in ("stack_redis", "stack_redis_sentinel"):
            recorded = host.file(f"/etc/ansible/facts.d/{fact}.fact")
            if recorded.exists:
                host.redis_cli_path = json.loads(recorded.content_string)["cli"]
                break
    return host.redis_cli_path


def admin_cli(host, port, admin, *args):
    """The Redis CLI as the admin user (user, password) against a server (or Sentinel) on `host`."""
    user, password = admin
    command = [redis_cli_path(host), "-p", str(port), "--user", user, "--no-auth-warning", *args]
    return host.run(f"REDISCLI_AUTH={shlex.quote(password)} timeout 5 {shlex.join(command)}")


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


def primary_endpoint(host, config):
    """(address, port) of the Redis primary a rendered config leads to, asked from `host`.

    A redis:// URL names it; sentinel:// URLs name the Sentinels, asked in turn with the
    config's Sentinel credentials, as the stack's clients ask them.
    """
    url = config["broker_url"]
    if not url.startswith("sentinel://"):
        return redis_endpoint(url)[:2]
    sentinel = config["sentinel"]
    # Bounded as the stack's clients bound it: a Sentinel cut off drops packets, and an
    # unbounded connect would wait out TCP's retries (about two minutes) before the next one.
    for one in url.split(";"):
        address, port, *_ = redis_endpoint(one)
        args = [redis_cli_path(host), "-h", address, "-p", str(port), "--user", sentinel["username"]]
        args += ["--no-auth-warning", "SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinel["master_name"]]
        result = host.run(f"REDISCLI_AUTH={shlex.quote(sentinel['password'])} timeout 3 {shlex.join(args)}")
        answer = result.stdout.split()
        if result.rc == 0 and len(answer) == 2:
            return answer[0], int(answer[1])
    raise AssertionError(f"no Sentinel of {host.inventory_name}'s config named a primary")


def direct_config(host, config):
    """`config` with its URLs pointing straight at the current primary (redis://, same user and db)."""
    address, port = primary_endpoint(host, config)
    resolved = dict(config)
    for key in ("broker_url", "result_backend"):
        _, _, user, password, db = redis_endpoint(config[key].split(";")[0])
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
        resolved[key] = f"redis://{credentials}{address}:{port}/{db}"
    return resolved


def redis_cli(host, url, *command, user=None, password=None, db=None):
    """Run the Redis CLI on `host` against the server of `url`; credentials from the URL unless given."""
    address, port, url_user, url_password, url_db = redis_endpoint(url)
    args = [redis_cli_path(host), "-h", address, "-p", str(port), "-n", str(url_db if db is None else db)]
    if user is None:
        user, password = url_user, url_password
    if user:
        args += ["--user", user, "--no-auth-warning"]
    env = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    return host.run(env + shlex.join(args + [str(c) for c in command]))


def http_text(host, url, body=None, headers=None, timeout=60):
    """GET (or POST `body` as JSON) `url` from `host` with its own Python: (status, body text)."""
    script = (
        "import json, sys, urllib.request, urllib.error\n"
        "data = sys.argv[2].encode() if sys.argv[2] else None\n"
        "request = urllib.request.Request(sys.argv[1], data=data,"
        " headers={'Content-Type': 'application/json', **json.loads(sys.argv[3])})\n"
        "try:\n"
        f"    r = urllib.request.urlopen(request, timeout={timeout})\n"
        "    print(json.dumps([r.status, r.read().decode()]))\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(json.dumps([e.code, e.read().decode()]))\n"
    )
    args = [url, "" if body is None else json.dumps(body), json.dumps(headers or {})]
    result = host.check_output(f"python3 -c {shlex.quote(script)} {shlex.join(args)}")
    status, text = json.loads(result)
    return status, text


def http_request(host, url, body=None, timeout=60):
    """GET (or POST `body` as JSON) `url` from `host` with its own Python: (status, JSON body)."""
    status, text = http_text(host, url, body, timeout=timeout)
    return status, json.loads(text) if text else None


def http_get(host, url, timeout=60):
    return http_request(host, url, timeout=timeout)


def web_fact(host):
    """What the tornado_web role deployed on `host`: address, ports, units, user."""
    return json.loads(host.file("/etc/ansible/facts.d/stack_web.fact").content_string)


def web_url(host, path, port=None):
    """URL of the web front on `host` (its first port unless given), at the address it listens on."""
    fact = web_fact(host)
    address = fact["address"]
    address = f"[{address}]" if ":" in address else address
    return f"http://{address}:{port or fact['ports'][0]}{path}"
