"""Await Celery results over one shared Redis pub/sub connection per process.

Celery's Redis backend SETs ``celery-task-meta-<id>`` and PUBLISHes the same
JSON on the channel of the same name for every state change. A waiter
subscribes to that channel and, once Redis confirms the subscription, reads
the key once: a result stored before the subscription took effect is found
by the read, and one stored after it arrives as a message.
"""

import asyncio
import json
import logging
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

KEY_PREFIX = "celery-task-meta-"
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
# Channels per SUBSCRIBE/UNSUBSCRIBE and keys per GET pipeline.
_BATCH = 500


class _Entry:
    __slots__ = ("future", "refs")

    def __init__(self, future: asyncio.Future[dict[str, Any] | None]) -> None:
        self.future = future
        self.refs = 0


def parse_meta(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


class ResultWaiter:
    """Resolve many concurrent waits with one subscriber connection.

    ``pubsub_client`` must have no socket timeout: its connection blocks in a
    read until a message arrives. ``client`` serves the GETs.

    ``heartbeat`` (seconds): PING the subscriber connection this often and
    drop it when nothing at all came back for three periods. A frozen or
    partitioned primary keeps the connection open and silent: with Sentinel
    the waiter must notice it and move to the new primary. Without a
    heartbeat only TCP keepalive ends such a connection.
    """

    def __init__(
        self,
        client: Redis,
        pubsub_client: Redis,
        *,
        reconnect_delay: float = 1.0,
        heartbeat: float | None = None,
    ) -> None:
        self._client = client
        self._pubsub_client = pubsub_client
        self._reconnect_delay = reconnect_delay
        self._heartbeat = heartbeat
        self._last_seen = 0.0
        # Set by reconnect(): leave this connection and subscribe again.
        self._kick = asyncio.Event()
        self._entries: dict[str, _Entry] = {}
        # (command, channel) in decision order; Redis applies them in the same
        # order, so a re-subscribe can never be undone by an older unsubscribe.
        self._outbox: deque[tuple[str, str]] = deque()
        self._to_fetch: set[str] = set()
        self._outbox_ready = asyncio.Event()
        self._fetch_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = False

    @property
    def channels(self) -> int:
        return len(self._entries)

    async def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(self._run()),
            asyncio.ensure_future(self._fetch_loop()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for entry in self._entries.values():
            if not entry.future.done():
                entry.future.set_result(None)

    async def wait(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        """Return the task's meta once it is in a ready state, None on timeout."""
        key = KEY_PREFIX + task_id
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(asyncio.get_running_loop().create_future())
            self._entries[key] = entry
            self._send("SUBSCRIBE", key)
        entry.refs += 1
        try:
            # shield: one waiter timing out must not cancel the shared future.
            return await asyncio.wait_for(asyncio.shield(entry.future), timeout)
        except TimeoutError:
            return None
        finally:
            entry.refs -= 1
            if entry.refs == 0 and self._entries.get(key) is entry:
                del self._entries[key]
                self._send("UNSUBSCRIBE", key)

    def reconnect(self) -> None:
        """Drop the subscriber connection: subscribe again and re-read every key.

        For a primary the Sentinels replaced: the old one may still be up.
        """
        self._kick.set()

    def _send(self, command: str, channel: str) -> None:
        self._outbox.append((command, channel))
        self._outbox_ready.set()

    def _deliver(self, key: str, raw: bytes | None) -> None:
        meta = parse_meta(raw)
        entry = self._entries.get(key)
        if meta is None or entry is None or entry.future.done():
            return
        if meta.get("status") in READY_STATES:
            entry.future.set_result(meta)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._reconnect_delay
        while True:
            pubsub = self._pubsub_client.pubsub()
            connected_at = None
            try:
                self._kick.clear()
                if self._heartbeat:
                    # A silent primary must not hold the handshake for ever.
                    await asyncio.wait_for(pubsub.connect(), 3 * self._heartbeat)
                else:
                    await pubsub.connect()
                connected_at = loop.time()
                self._last_seen = connected_at
                # A new connection has no subscriptions: subscribe every live
                # key again; the confirmations trigger GETs that catch results
                # published while we were disconnected.
                self._outbox.clear()
                self._outbox.extend(("SUBSCRIBE", key) for key in self._entries)
                self._outbox_ready.set()
                self.connected = True
                await self._pump(pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("result subscriber connection failed: %r", exc)
            except Exception:
                # Waiters depend on this loop; keep it alive whatever happens.
                log.exception("result subscriber crashed; restarting it")
            finally:
                self.connected = False
                try:
                    await pubsub.aclose()
                except Exception as exc:  # the connection is being dropped anyway
                    log.debug("closing result subscriber: %s", exc)
            # Back off while Redis is down or refuses us, not after a
            # connection that served for a while and then dropped.
            if connected_at is not None and loop.time() - connected_at > 30:
                delay = self._reconnect_delay
            await asyncio.sleep(delay)
            # Capped low: waiters time out while the subscriber is away.
            delay = min(delay * 2, 5)

    async def _pump(self, pubsub: Any) -> None:
        tasks = [
            asyncio.ensure_future(self._read(pubsub)),
            asyncio.ensure_future(self._write(pubsub)),
            asyncio.ensure_future(self._kicked()),
        ]
        if self._heartbeat:
            tasks.append(asyncio.ensure_future(self._beat(pubsub, self._heartbeat)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()

    async def _kicked(self) -> None:
        await self._kick.wait()
        raise ConnectionError("the primary changed; subscribing again")

    async def _beat(self, pubsub: Any, period: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            silent = loop.time() - self._last_seen
            if silent > 3 * period:
                raise ConnectionError(
                    f"result subscriber heard nothing for {silent:.0f} s"
                )
            # Answered with a pong message even while subscribed.
            await pubsub.ping()

    async def _write(self, pubsub: Any) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                command, channel = self._outbox.popleft()
                batch = [channel]
                while (
                    self._outbox
                    and self._outbox[0][0] == command
                    and len(batch) < _BATCH
                ):
                    batch.append(self._outbox.popleft()[1])
                await pubsub.execute_command(command, *batch)

    async def _read(self, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await pubsub.get_message(timeout=None)
            self._last_seen = loop.time()
            if not message:
                continue
            kind = message["type"]
            channel = message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            if kind == "message":
                self._deliver(channel, message["data"])
            elif kind == "subscribe":
                entry = self._entries.get(channel)
                if entry is None or entry.future.done():
                    continue
                self._to_fetch.add(channel)
                self._fetch_ready.set()

    async def _fetch_loop(self) -> None:
        while True:
            await self._fetch_ready.wait()
            self._fetch_ready.clear()
            keys = [key for key in self._to_fetch if key in self._entries]
            self._to_fetch.clear()
            for start in range(0, len(keys), _BATCH):
                chunk = keys[start : start + _BATCH]
                try:
                    # Plain GETs in one round trip; no MULTI, no MGET, so the
                    # web's ACL needs nothing but GET on these keys.
                    async with self._client.pipeline(transaction=False) as pipe:
                        for key in chunk:
                            pipe.get(key)
                        values = await pipe.execute()
                except (RedisError, OSError) as exc:
                    log.warning("reading task results failed, retrying: %s", exc)
                    self._to_fetch.update(chunk)
                    await asyncio.sleep(self._reconnect_delay)
                    self._fetch_ready.set()
                    continue
                for key, raw in zip(chunk, values, strict=True):
                    self._deliver(key, raw)
