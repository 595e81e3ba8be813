"""Redis Sentinel: finding the primary, and leaving a primary that is not one any more.

Failure detection, and why it is not left to the TCP stack alone:

* A primary that dies (kill -9, reboot) resets its connections: every client
  sees the error at once and asks the Sentinels where the primary is now.
* A primary cut off by a partition (packets dropped, no RST) or frozen (SIGSTOP,
  a stalled VM) leaves every connection open. The kernel of a frozen host still
  acknowledges what it is sent, so TCP keepalive and TCP_USER_TIMEOUT notice
  only the partition, never the freeze. Hence three layers, each with a bound
  well under the Sentinels' own failover time plus a few seconds:

  - every connection: TCP keepalive after 5 s idle, probes 2 s apart, 3 probes,
    and TCP_USER_TIMEOUT 10 s for data sent and never acknowledged (a partition
    seen by a connection idle or busy);
  - every command waiting for its reply: a socket timeout of 5 s (a freeze);
    the blocking pops and the pub/sub read, which wait by design, are covered
    by kombu's pop health check and ResultWaiter's heartbeat instead;
  - above all a MasterWatch per process, which asks the Sentinels every second
    where the primary is and, when it changed, shuts every connection to the
    old address. It also covers a planned failover, where the old primary stays
    up and writable for several seconds after a replica was promoted (Sentinel
    demotes it only later): whatever is written there is lost when it becomes
    a replica, and a worker still popping there would run again, on the new
    primary, what it already ran.

The consumer watchdog's 60 s (worker.STALL_SECONDS) is left alone: it is the
last resort against a consumer kombu lost track of, not a failure detector.

Finding the primary after a partition healed (install_failover_awareness):

* redis-py takes the first Sentinel that answers. The Sentinel that was cut
  off with the old primary still names it for a second or two after the
  partition heals, until its peers' hello messages reach it; a client that
  asks it first (redis-py keeps each client's last good Sentinel first) is
  sent to the old primary. Here a client asks Sentinels until a majority of
  them agree, and without a majority takes the answer of the newest epoch.
* That old primary refuses writes (NOREPLICAS: min-replicas-to-write) until
  the Sentinels demote it. redis-py raises READONLY from what it took for the
  primary as a connection error, so that every retry layer (its own, kombu's,
  Celery's result backend) asks the Sentinels again, but NOREPLICAS as a plain
  ResponseError: Celery then records a task as failed and acks it (the task is
  lost), and a consumer stops on it. Here NOREPLICAS is handled as READONLY.
* A Sentinel that does not answer is given up after its timeout, not retried:
  redis-py's default of 10 retries made one unreachable Sentinel cost ~25 s
  per question, longer than the failover itself.
"""

import functools
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, ResponseError, TimeoutError
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection

from stackdemo.config import SENTINEL_URL_SEP, Config, SentinelConfig

log = logging.getLogger(__name__)

DEFAULT_SENTINEL_PORT = 26379
# Seconds; see the module docstring.
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 10_000
REPLY_TIMEOUT = 5
CONNECT_TIMEOUT = 5
# Sentinels answer from memory; a slow one is skipped for the next.
SENTINEL_TIMEOUT = 2
WATCH_INTERVAL = 1.0


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def uses_sentinel(config: Config) -> bool:
    return config.sentinel is not None


def keepalive_options() -> dict[int, int]:
    wanted = {
        "TCP_KEEPIDLE": KEEPALIVE_IDLE,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL,
        "TCP_KEEPCNT": KEEPALIVE_COUNT,
        # An IPPROTO_TCP option like the others: redis-py sets them all alike.
        "TCP_USER_TIMEOUT": USER_TIMEOUT_MS,
    }
    return {
        getattr(socket, name): value
        for name, value in wanted.items()
        if hasattr(socket, name)
    }


def socket_options(reply_timeout: float | None = REPLY_TIMEOUT) -> dict[str, Any]:
    """redis-py connection arguments of a connection to a data node."""
    return {
        "socket_timeout": reply_timeout,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
    }


def sentinel_kwargs(
    sentinel: SentinelConfig, asynchronous: bool = False
) -> dict[str, Any]:
    """Connection arguments of the connections to the Sentinels themselves."""
    retry_class = redis.asyncio.retry.Retry if asynchronous else redis.retry.Retry
    kwargs: dict[str, Any] = {
        # No retry: the next Sentinel is the retry.
        "retry": retry_class(NoBackoff(), 0),
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
    }
    if sentinel.username is not None:
        kwargs["username"] = sentinel.username
    if sentinel.password is not None:
        kwargs["password"] = sentinel.password
    return kwargs


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    addresses = []
    for chunk in url.split(SENTINEL_URL_SEP):
        parts = urlsplit(chunk)
        addresses.append((parts.hostname, parts.port or DEFAULT_SENTINEL_PORT))
    return addresses


def data_node_params(url: str) -> dict[str, Any]:
    """User, password and database of the data nodes, from the first URL."""
    parts = urlsplit(url.split(SENTINEL_URL_SEP, 1)[0])
    db = parts.path.lstrip("/")
    return {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "db": int(db) if db else 0,
    }


def sync_master(url: str, options: dict[str, Any], **kwargs: Any) -> Any:
    """A redis.Redis client of the current primary (the watchdog's PING).

    ``options``: the transport options (master_name, sentinel_kwargs).
    """
    params = {**socket_options(), **data_node_params(url), **kwargs}
    manager = Sentinel(
        sentinel_addresses(url), sentinel_kwargs=options.get("sentinel_kwargs")
    )
    return manager.master_for(options["master_name"], **params)


def drop_connections(pool: Any, address: tuple[str, int]) -> int:
    """Shut every socket of a synchronous redis-py pool connected to ``address``.

    shutdown() rather than close(): it is safe from any thread, and a reader
    blocked on the socket, or an event loop polling it, sees EOF at once and
    takes its usual path for a lost connection (reconnect through Sentinel).
    """
    # A pool inherited across fork holds the parent's sockets: leave them be.
    if pool is None or getattr(pool, "pid", os.getpid()) != os.getpid():
        return 0
    connections: list[Any] = list(getattr(pool, "_available_connections", []))
    in_use: Iterable[Any]
    try:
        in_use = pool._get_in_use_connections()
    except (AttributeError, TypeError):
        in_use = getattr(pool, "_in_use_connections", [])
    connections.extend(in_use)
    dropped = 0
    for connection in connections:
        sock = getattr(connection, "_sock", None)
        if sock is None or (connection.host, connection.port) != address:
            continue
        try:
            sock.shutdown(socket.SHUT_RDWR)
            dropped += 1
        except OSError:
            pass
    return dropped


class MasterWatch:
    """A thread that asks the Sentinels every second where the primary is.

    ``on_change(old, new)`` runs in that thread when the address changes.
    ``options``: the transport options (master_name, sentinel_kwargs).
    """

    def __init__(
        self,
        url: str,
        options: dict[str, Any],
        on_change: Callable[[tuple[str, int], tuple[str, int]], None],
        interval: float = WATCH_INTERVAL,
    ) -> None:
        self._sentinel = Sentinel(
            sentinel_addresses(url), sentinel_kwargs=options.get("sentinel_kwargs")
        )
        self._name = options["master_name"]
        self._on_change = on_change
        self._interval = interval
        self._stop = threading.Event()
        self.address: tuple[str, int] | None = None
        self._thread = threading.Thread(
            target=self._run, name="sentinel-master-watch", daemon=True
        )

    def start(self) -> "MasterWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def poll(self) -> None:
        try:
            address = self._sentinel.discover_master(self._name)
        except Exception as exc:  # no Sentinel answers: keep what we have
            log.debug("no Sentinel answered: %s", exc)
            return
        address = (str(address[0]), int(address[1]))
        old, self.address = self.address, address
        if old is not None and old != address:
            log.warning(
                "Sentinel: primary %r moved from %s:%d to %s:%d; "
                "dropping connections to the old one",
                self._name,
                *old,
                *address,
            )
            try:
                self._on_change(old, address)
            except Exception:
                log.exception("reacting to the new primary failed")

    def _run(self) -> None:
        self.poll()
        while not self._stop.wait(self._interval):
            self.poll()


def _majority_master(sentinel: Sentinel, service_name: str) -> tuple[str, int]:
    """The primary a majority of the Sentinels name, else the newest epoch's."""
    needed = len(sentinel.sentinels) // 2 + 1
    votes: Counter[tuple[str, int]] = Counter()
    epochs: dict[tuple[str, int], int] = {}
    answered, errors = [], []
    for client in list(sentinel.sentinels):
        try:
            state = client.sentinel_masters().get(service_name)
        except (ConnectionError, TimeoutError) as exc:
            errors.append(f"{client} - {exc!r}")
            continue
        answered.append(client)
        if not state or not sentinel.check_master_state(state, service_name):
            continue
        address = (str(state["ip"]), int(state["port"]))
        votes[address] += 1
        epochs[address] = max(epochs.get(address, 0), int(state.get("config-epoch", 0)))
        if votes[address] >= needed:
            break
    # Those that answered first next time: a Sentinel that is down costs its
    # timeout once, not on every question.
    sentinel.sentinels[:] = answered + [
        client for client in sentinel.sentinels if client not in answered
    ]
    if not votes:
        details = f": {', '.join(errors)}" if errors else ""
        raise MasterNotFoundError(f"No master found for {service_name!r}{details}")
    return max(votes, key=lambda address: (votes[address], epochs[address]))


def _noreplicas_as_connection_error(read_response: Callable) -> Callable:
    @functools.wraps(read_response)
    def wrapper(self: SentinelManagedConnection, *args: Any, **kwargs: Any) -> Any:
        try:
            return read_response(self, *args, **kwargs)
        except ResponseError as exc:
            if self.connection_pool.is_master and str(exc).startswith("NOREPLICAS"):
                # As redis-py does for READONLY: a write refused, never run.
                self.disconnect()
                raise ConnectionError(f"the primary refuses writes: {exc}") from exc
            raise

    wrapper.stack_failover_aware = True  # type: ignore[attr-defined]
    return wrapper


def install_failover_awareness() -> None:
    """Apply the module docstring's partition rules to every Sentinel client.

    A process-wide change of redis-py: kombu's and Celery's Sentinel clients
    are built inside those libraries, with no hook for either rule.
    """
    if getattr(SentinelManagedConnection.read_response, "stack_failover_aware", False):
        return
    SentinelManagedConnection.read_response = _noreplicas_as_connection_error(
        SentinelManagedConnection.read_response
    )
    Sentinel.discover_master = _majority_master


install_failover_awareness()
