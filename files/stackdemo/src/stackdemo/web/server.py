"""Wire the web process together and run it until SIGTERM or SIGINT."""

import asyncio
import errno
import logging
import os
import signal
import socket
from dataclasses import dataclass, field

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from tornado.httpserver import HTTPServer
from tornado.web import Application

from stackdemo import sentinel
from stackdemo.broker import sentinel_channels
from stackdemo.config import Config, SentinelConfig
from stackdemo.web.handlers import (
    ADD_TASK,
    AddHandler,
    HealthHandler,
    MetricsHandler,
    NotFoundHandler,
    TaskHandler,
)
from stackdemo.web.metrics import Metrics
from stackdemo.web.results import ResultWaiter
from stackdemo.web.submit import Submitter

log = logging.getLogger(__name__)


@dataclass
class Context:
    config: Config
    submitter: Submitter
    waiter: ResultWaiter
    results: Redis
    subscriber: Redis
    broker: Redis
    metrics: Metrics
    # With Sentinel: the manager the three clients above find the primary with.
    sentinel_manager: Sentinel | None = None
    in_flight: int = 0
    # Set on SIGTERM: long polls answer at once, responses close their connection.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self) -> None:
        await self.waiter.close()
        self.submitter.close()
        for client in (self.results, self.subscriber, self.broker):
            await client.aclose()
        if self.sentinel_manager is not None:
            await self.sentinel_manager.aclose()

    async def watch_primary(self, interval: float = sentinel.WATCH_INTERVAL) -> None:
        """Leave a primary the Sentinels replaced (see stackdemo.sentinel).

        A pool only asks the Sentinels when it opens a connection; a planned
        failover leaves the old primary up and writable for seconds, and what
        the web LPUSHes there in that time is lost when it becomes a replica.
        """
        if self.sentinel_manager is None or self.config.sentinel is None:
            return
        name = self.config.sentinel.master_name
        current = None
        while True:
            try:
                address = await self.sentinel_manager.discover_master(name)
            except Exception as exc:  # no Sentinel answers: keep what we have
                log.debug("no Sentinel answered: %s", exc)
            else:
                address = (str(address[0]), int(address[1]))
                if current is not None and address != current:
                    log.warning(
                        "Sentinel: primary moved from %s:%d to %s:%d; "
                        "dropping connections to the old one",
                        *current,
                        *address,
                    )
                    await self._leave(current)
                current = address
            await asyncio.sleep(interval)

    async def _leave(self, old: tuple[str, int]) -> None:
        self.waiter.reconnect()
        for client in (self.results, self.broker):
            # In-use ones too: their commands fail and are retried (reads).
            await client.connection_pool.disconnect()
        # The producer's kombu connections (synchronous, used from threads).
        for channel in list(sentinel_channels):
            channel.drop_connections_to(old)


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """A bounded pool (requests wait for a connection) of the Sentinels' primary."""


def _keepalive_options() -> dict[int, int]:
    # Notice a silently dropped subscriber connection in about a minute.
    wanted = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}
    return {
        getattr(socket, name): value
        for name, value in wanted.items()
        if hasattr(socket, name)
    }


def create_context(config: Config) -> Context:
    if config.sentinel is not None:
        return _sentinel_context(config, config.sentinel)
    # Bounded pools: under load requests queue for a connection instead of
    # opening one per request. Their commands only read (GET, PING, LLEN), so a
    # command that meets a connection Redis closed (a restart leaves every
    # pooled one dead) is sent again on a new one instead of failing a request.
    reads_retry = Retry(ExponentialBackoff(cap=1.0, base=0.1), 2)
    results = Redis(
        connection_pool=BlockingConnectionPool.from_url(
            config.result_backend,
            max_connections=20,
            timeout=10,
            socket_connect_timeout=5,
            socket_timeout=10,
            retry=reads_retry,
        )
    )
    # Blocks in a read until a message comes, hence no socket timeout; no
    # retries either, so a lost connection reaches ResultWaiter, which must
    # subscribe again and re-read every key.
    subscriber = Redis.from_url(
        config.result_backend,
        socket_connect_timeout=5,
        socket_timeout=None,
        socket_keepalive=True,
        socket_keepalive_options=_keepalive_options(),
        retry=Retry(NoBackoff(), 0),
    )
    broker = Redis(
        connection_pool=BlockingConnectionPool.from_url(
            config.broker_url,
            max_connections=2,
            timeout=5,
            socket_connect_timeout=5,
            socket_timeout=5,
            retry=reads_retry,
        )
    )
    return _context(config, results, subscriber, broker)


def _sentinel_context(config: Config, settings: SentinelConfig) -> Context:
    """The clients of create_context on the primary named by the Sentinels.

    Same pools, timeouts and retries, plus the failure detection of
    stackdemo.sentinel: short keepalive and TCP_USER_TIMEOUT everywhere, and a
    heartbeat on the subscriber, whose read has no timeout by design.
    """
    manager = Sentinel(
        sentinel.sentinel_addresses(config.result_backend),
        sentinel_kwargs=sentinel.sentinel_kwargs(settings, asynchronous=True),
    )
    name = settings.master_name
    reads_retry = Retry(ExponentialBackoff(cap=1.0, base=0.1), 2)

    def master(url: str, reply_timeout: float | None, **kwargs) -> Redis:
        return manager.master_for(
            name,
            **sentinel.data_node_params(url),
            **sentinel.socket_options(reply_timeout),
            **kwargs,
        )

    results = master(
        config.result_backend,
        10,
        connection_pool_class=BlockingSentinelConnectionPool,
        max_connections=20,
        timeout=10,
        retry=reads_retry,
    )
    subscriber = master(config.result_backend, None, retry=Retry(NoBackoff(), 0))
    broker = master(
        config.broker_url,
        5,
        connection_pool_class=BlockingSentinelConnectionPool,
        max_connections=2,
        timeout=5,
        retry=reads_retry,
    )
    ctx = _context(config, results, subscriber, broker, heartbeat=3)
    ctx.sentinel_manager = manager
    return ctx


def _context(
    config: Config,
    results: Redis,
    subscriber: Redis,
    broker: Redis,
    heartbeat: float | None = None,
) -> Context:
    waiter = ResultWaiter(results, subscriber, heartbeat=heartbeat)
    metrics = Metrics()
    metrics.add_gauge(
        "stackdemo_result_subscriptions",
        "Task result channels subscribed to.",
        lambda: waiter.channels,
    )
    metrics.add_gauge(
        "stackdemo_result_subscriber_connected",
        "1 while the result pub/sub connection is up.",
        lambda: int(waiter.connected),
    )
    return Context(
        config=config,
        submitter=Submitter(config),
        waiter=waiter,
        results=results,
        subscriber=subscriber,
        broker=broker,
        metrics=metrics,
    )


def make_app(ctx: Context) -> Application:
    args = {"ctx": ctx}
    routes = [
        (r"/api/tasks/([^/]+)", TaskHandler, args),
        (r"/healthz", HealthHandler, args),
        (r"/metrics", MetricsHandler, args),
    ]
    # The seed's /add sends the demo's add task: a front for another app,
    # whose workers do not know it, must not put it in their queues.
    if ADD_TASK in ctx.config.web.allowed_tasks:
        routes.append((r"/add", AddHandler, args))
    return Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
    )


def default_backlog(path: str = "/proc/sys/net/core/somaxconn") -> int:
    """The kernel's cap on listen queues: asking for more is silently cut to it.

    Tornado asks for 128 whatever the host allows; a burst of clients beyond
    the queue gets its connections dropped or reset before the process can
    accept them.
    """
    try:
        with open(path) as handle:
            return max(128, int(handle.read()))
    except (OSError, ValueError):
        return 128


SD_LISTEN_FDS_START = 3


def inherited_sockets() -> list[socket.socket]:
    """Listening sockets systemd passed to this process (socket activation).

    The socket unit owns the listening socket: while this process restarts,
    the kernel keeps queueing connections on it and the next process accepts
    them, so a restart refuses no client.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0"))
    # Not for our children: they are not the process systemd meant.
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


async def serve(
    config: Config, address: str, port: int, backlog: int | None = None
) -> None:
    ctx = create_context(config)
    watch = asyncio.ensure_future(ctx.watch_primary())
    try:
        await ctx.waiter.start()
        # Twice the API limit: a chunked body a little too large still gets
        # a JSON 413 from the handler; beyond this Tornado drops the
        # connection before buffering more.
        server = HTTPServer(make_app(ctx), max_body_size=2 * config.web.max_body_bytes)
        sockets = inherited_sockets()
        if sockets:
            server.add_sockets(sockets)
            for sock in sockets:
                log.info("listening on %s (socket from systemd)", _where(sock))
        else:
            backlog = backlog or default_backlog()
            await listen_when_address_is_up(server, port, address, backlog)
            log.info("listening on %s:%d (backlog %d)", address, port, backlog)
        await _until_signalled()
        log.info("stopping; draining %d request(s)", ctx.in_flight)
        ctx.stopping.set()
        # Clients on a kept-alive connection move to a new one, which the
        # next process accepts.
        server.conn_params.no_keep_alive = True
        server.stop()
        await _drain(ctx, config.web.max_wait_seconds + 5)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await ctx.close()


def _where(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)


async def listen_when_address_is_up(
    server: HTTPServer,
    port: int,
    address: str,
    backlog: int = 128,
    max_delay: float = 30.0,
) -> None:
    """Listen, waiting with back-off while the address is not on this host.

    An address can come up after the service starts (DHCP, a VIP, a bond);
    that is a wait, not a failure that would end in a dead unit.
    """
    delay = 1.0
    while True:
        try:
            server.listen(port, address, backlog=backlog)
            return
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
        log.warning(
            "address %s is not configured on this host yet; retrying in %.0f s",
            address,
            delay,
        )
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def _drain(ctx: Context, grace: float) -> None:
    # Requests awaiting a result may need up to max_wait_seconds.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while ctx.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.1)
    if ctx.in_flight:
        log.warning("exiting with %d request(s) unanswered", ctx.in_flight)
