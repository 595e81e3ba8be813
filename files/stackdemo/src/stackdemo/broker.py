"""The workers' Redis transport: atomic delivery, per-node unacked keys, dead letters.

kombu's Redis transport keeps every delivered, unacknowledged message in one
hash shared by all workers and hands it back only after the visibility
timeout (an hour by default) or at a warm shutdown. A pool that dies hard
(kill -9, OOM, power loss) leaves its tasks there for that hour. Here each
worker node (``pool@host``, one systemd unit) owns its hash: whatever is in
it when the node (re)connects was delivered to a predecessor that is gone,
because systemd never runs two instances of one unit, so the node puts it
back in its queues before it consumes anything.

kombu pops a message (BRPOP) and records it as unacknowledged in a second
round trip: a pool killed between the two, or with the reply still unread in
its socket, loses the message. Here a message leaves its queue only by an
atomic move into the node's in-flight list for that queue (LMOVE, in a Lua
sweep of every list in priority order, or BLMOVE while idle), and leaves the
in-flight list in the same transaction that records it as unacknowledged. At
every moment it is in a queue, in flight, or in the unacked hash; a restarted
node moves its in-flight lists back into their queues.

kombu also decodes what it pops from a queue list without a guard: one
non-JSON string pushed by any producer stops the worker's consumer. Here a
message that is not a kombu envelope, and any message the worker rejects
without requeueing (an undecodable or disallowed body, an unknown task), is
moved to a dead-letter list with the reason, counted, and logged.
"""

import base64
import functools
import hashlib
import json
import logging
import time
import weakref
from collections.abc import Iterable
from typing import Any

import kombu.transport
import redis
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from stackdemo.keys import (
    DEAD_LETTER_KEY,
    DEAD_LETTER_TOTAL_KEY,
    IN_FLIGHT_KEY_PREFIX,
    IN_FLIGHT_OPTION,
    UNACKED_KEY_PREFIXES,
)
from stackdemo.sentinel import drop_connections

log = logging.getLogger(__name__)


# Transport options of a producer whose publishes wait for replicas (Channel._put).
PUBLISH_REPLICA_ACKS_OPTION = "publish_replica_acks"
PUBLISH_REPLICA_ACK_TIMEOUT_OPTION = "publish_replica_ack_timeout_ms"
# kombu's default separator in binding tables and priority list names.
KOMBU_SEP = kombu_redis.Channel.sep


def node_transport_options(nodename: str) -> dict[str, str]:
    """Transport options that give one worker node its own unacked keys."""
    options = {
        option: prefix + nodename for option, prefix in UNACKED_KEY_PREFIXES.items()
    }
    options[IN_FLIGHT_OPTION] = f"{IN_FLIGHT_KEY_PREFIX}{nodename}@"
    return options


# Moves the first message found, in KEYS order, to its in-flight list and
# returns {queue list, message}. KEYS: n queue lists, then their n in-flight lists.
SWEEP_SCRIPT = """
local n = #KEYS / 2
for i = 1, n do
  local message = redis.call('LMOVE', KEYS[i], KEYS[n + i], 'RIGHT', 'LEFT')
  if message then
    return {KEYS[i], message}
  end
end
return false
"""
# Redis names a script by its SHA-1 (EVALSHA); no security rests on it.
SWEEP_SHA = hashlib.sha1(SWEEP_SCRIPT.encode(), usedforsecurity=False).hexdigest()

# An idle pool blocks on its first queue's main list this long, then sweeps
# every list: the longest a message of another list waits on an idle pool.
IDLE_WAIT_SECONDS = 0.25


def envelope_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a kombu message kombu and Celery can handle, or None."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "not JSON"
    if not isinstance(payload, dict):
        return "not a JSON object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "no properties"
    if not isinstance(properties.get("delivery_info"), dict):
        return "no delivery_info"
    if not isinstance(properties.get("delivery_tag"), str):
        return "no delivery_tag"
    if not isinstance(payload.get("headers", {}), dict):
        return "headers not an object"
    if not isinstance(payload.get("body"), str):
        return "body not a string"
    return None


def dead_letter_record(raw: bytes, reason: str, queue: str) -> str:
    """The dead-letter list entry: the message exactly as received, and why."""
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode(), "base64"
    return json.dumps(
        {
            "reason": reason,
            "queue": queue,
            "time": time.time(),
            "encoding": encoding,
            "message": text,
        }
    )


def _queue_dead_letter(pipe: Any, record: str) -> None:
    """Add the dead-letter list's push and counter to a transaction."""
    pipe.lpush(DEAD_LETTER_KEY, record).incr(DEAD_LETTER_TOTAL_KEY)


class _ScreeningRedis(redis.Redis):
    """Client whose RPOP replies are screened before kombu decodes them."""

    def __init__(self, *args: Any, screen: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._screen = screen

    def rpop(self, name: Any, count: int | None = None) -> Any:
        # kombu's synchronous get() pops with RPOP (one item, no count).
        item = super().rpop(name, count)
        if count is None and item is not None:
            screened = self._screen((name, item))
            return screened[1] if screened else None
        return item


# When the consumer last got a reply to a pop (an idle one gets one several
# times a second); read by the worker's watchdog.
last_pop_reply: dict[str, float] = {"at": time.monotonic()}

# The transport of the consumer's current connection, set at each consumer start.
_live_transport: dict[str, Any] = {}


def mark_live(transport: Any) -> None:
    _live_transport["transport"] = transport


class QoS(kombu_redis.QoS):
    """Acks and rejects; none through a channel of a connection already lost.

    Celery acks a task when its pool process reports back, possibly after the
    connection it was delivered on was lost and replaced. On the new
    connection the node has already requeued that message (RestoreOrphans), so
    the late ack has nothing left to do; sent anyway, it would open a
    connection from the dead channel's pools, whose disconnect hooks reach the
    event loop the live consumer shares.
    """

    def _stale(self, what: str, delivery_tag: str) -> bool:
        live = _live_transport.get("transport")
        if live is not None and self.channel.connection is not live:
            log.info(
                "Dropped the %s of %s: its connection was replaced", what, delivery_tag
            )
            return True
        return False

    def ack(self, delivery_tag: str) -> None:
        if self._stale("ack", delivery_tag):
            return
        try:
            super().ack(delivery_tag)
        except self.channel.connection_errors:
            # kombu frees the prefetch slot only after Redis took the ack: with
            # Redis away every ack leaks a slot, and a pool whose slots are all
            # leaked never asks for a message again. Free it; the message stays
            # in the node's hash and is requeued at the next (re)connection.
            virtual.QoS.ack(self, delivery_tag)
            raise

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._stale("reject", delivery_tag):
            return
        if not requeue:
            self.channel.dead_letter_unacked(delivery_tag)
        super().reject(delivery_tag, requeue=requeue)

    def append(self, message: Any, delivery_tag: str) -> None:
        transport = self.channel.connection
        in_flight, transport.in_flight_delivery = transport.in_flight_delivery, None
        if in_flight is None:
            super().append(message, delivery_tag)
            return
        in_flight_key, raw = in_flight
        delivery = message.delivery_info
        stored = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            # One transaction: in flight or unacknowledged, never neither.
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, stored)
            pipe.lrem(in_flight_key, 1, raw)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)


class UnreplicatedPublish(Exception):
    """A message the primary took but too few replicas acknowledged in time."""


class Channel(kombu_redis.Channel):
    QoS = QoS
    in_flight_key_prefix = IN_FLIGHT_KEY_PREFIX
    publish_replica_acks = 0
    publish_replica_ack_timeout_ms = 1000
    # Next pop: a sweep of every list (True) or an idle wait on the first (False).
    _sweep_next = True
    _pending_pop: tuple[str, str | None] = ("EVALSHA", None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.connection.client.transport_options
        self.in_flight_key_prefix = options.get(IN_FLIGHT_OPTION, IN_FLIGHT_KEY_PREFIX)
        self.publish_replica_acks = options.get(
            PUBLISH_REPLICA_ACKS_OPTION, self.publish_replica_acks
        )
        self.publish_replica_ack_timeout_ms = options.get(
            PUBLISH_REPLICA_ACK_TIMEOUT_OPTION, self.publish_replica_ack_timeout_ms
        )

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """LPUSH, then WAIT for replicas on the same connection (one pipeline).

        Redis acknowledges a write before any replica has it: a primary lost
        at that moment takes the message along, after the producer was told
        it was sent. With WAIT the producer is told so only once
        ``publish_replica_acks`` replicas hold it; otherwise the publish
        fails, the caller refuses the task, and the message, still on the
        primary, may run all the same (at least once, never silently lost).
        """
        acks = self.publish_replica_acks
        if not acks or kwargs.get("_publish_batch") is not None:
            super()._put(queue, message, **kwargs)
            return
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client:
            with client.pipeline(transaction=False) as pipe:
                pipe.lpush(key, dumps(message))
                if self._expires and queue in self._expires:
                    for priority in self.priority_steps:
                        pipe.pexpire(
                            self._q_for_pri(queue, priority), self._expires[queue]
                        )
                pipe.execute_command("WAIT", acks, self.publish_replica_ack_timeout_ms)
                acked = pipe.execute()[-1]
        if acked < acks:
            raise UnreplicatedPublish(
                f"{acked} of {acks} replica(s) acknowledged the message within "
                f"{self.publish_replica_ack_timeout_ms} ms"
            )

    def get_table(self, exchange: str) -> list[tuple[str, ...]]:
        """The exchange's bindings, written with the stack's separator or kombu's.

        A plain Celery client (``celery inspect`` with kombu's defaults) binds
        its reply queue with kombu's own separator; the worker must find it to
        answer, whatever separator the client's transport uses.
        """
        table = []
        for binding in super().get_table(exchange):
            if len(binding) == 1 and KOMBU_SEP in binding[0]:
                binding = tuple(binding[0].split(KOMBU_SEP))
            table.append(binding)
        return table

    def _get_client(self) -> Any:
        return functools.partial(_ScreeningRedis, screen=self._screen_popped)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        # kombu builds a client (and its table of some 200 reply callbacks)
        # for every ack and every delivery; one per pool serves them all, as
        # a client takes a connection from the pool for each command.
        pool = self.pool
        cached = self.__dict__.get("_pool_client")
        if cached is None or cached.connection_pool is not pool:
            cached = self.__dict__["_pool_client"] = super()._create_client()
        return cached

    def in_flight_key(self, queue_list: str) -> str:
        return self.in_flight_key_prefix + queue_list

    def queue_lists(self, queues: Iterable[str]) -> list[str]:
        """The Redis lists of ``queues``, in the order BRPOP would pop them."""
        queues = list(queues)
        names = (self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues)
        return list(dict.fromkeys(names))

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self.global_keyprefix:
            super()._brpop_start(timeout)
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        lists = self.queue_lists(queues)
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        if self._sweep_next:
            in_flight = [self.in_flight_key(name) for name in lists]
            self._pending_pop = ("EVALSHA", None)
            connection.send_command(
                "EVALSHA", SWEEP_SHA, 2 * len(lists), *lists, *in_flight
            )
        else:
            first = lists[0]
            self._pending_pop = ("BLMOVE", first)
            connection.send_command(
                "BLMOVE",
                first,
                self.in_flight_key(first),
                "RIGHT",
                "LEFT",
                IDLE_WAIT_SECONDS,
            )

    def _read_pop_reply(self, command: str, **options: Any) -> Any:
        try:
            return self.client.parse_response(
                self.client.connection, command, **options
            )
        except redis.exceptions.NoScriptError:
            # Redis restarted or flushed its script cache: load it, pop next time.
            with self.conn_or_acquire() as client:
                client.script_load(SWEEP_SCRIPT)
            raise kombu_redis.Empty() from None
        except self.connection_errors:
            # Disconnect so that the next iteration reconnects, as kombu does.
            self.client.connection.disconnect()
            raise

    def _brpop_read(self, **options: Any) -> bool:
        if self.global_keyprefix:
            return super()._brpop_read(**options)
        command, waited_on = self._pending_pop
        try:
            reply = self._read_pop_reply(command, **options)
            last_pop_reply["at"] = time.monotonic()
            # After a message or an idle wait, sweep; after an empty sweep, wait.
            # Nothing popped is nil (None): an empty string is a message, one
            # that BLMOVE already moved in flight, to be dead-lettered below.
            self._sweep_next = reply is not None or command == "BLMOVE"
            if reply is None:
                raise kombu_redis.Empty()
            source, raw = (waited_on, reply) if command == "BLMOVE" else reply
            source = source.decode() if isinstance(source, bytes) else source
            in_flight_key = self.in_flight_key(source)
            if self._dead_letter_if_unreadable(source, raw, in_flight_key):
                raise kombu_redis.Empty()
            queue = source.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            # QoS.append, called while delivering, takes it out of the in-flight list.
            self.connection.in_flight_delivery = (in_flight_key, raw)
            try:
                self.connection._deliver(loads(bytes_to_str(raw)), queue)
            finally:
                self.connection.in_flight_delivery = None
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _poll_error(self, type: str, **options: Any) -> None:
        if type == "BRPOP" and not self.global_keyprefix:
            try:
                self._brpop_read(**options)
            except kombu_redis.Empty:
                pass
            return
        super()._poll_error(type, **options)

    def _screen_popped(
        self, response: tuple[bytes, bytes]
    ) -> tuple[bytes, bytes] | None:
        source, raw = response
        source = (
            source.decode("utf-8", "replace") if isinstance(source, bytes) else source
        )
        return None if self._dead_letter_if_unreadable(source, raw) else response

    def _dead_letter_if_unreadable(
        self, source: str, raw: bytes, in_flight_key: str | None = None
    ) -> bool:
        """Move ``raw`` to the dead letters unless it is a kombu message."""
        problem = envelope_problem(raw)
        if problem is None:
            return False
        queue = source.rsplit(self.sep, 1)[0]
        record = dead_letter_record(raw, f"unreadable message: {problem}", queue)
        try:
            # A pool connection: the pop connection belongs to the poller.
            with self.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=True)
                _queue_dead_letter(pipe, record)
                if in_flight_key is not None:
                    pipe.lrem(in_flight_key, 1, raw)
                pipe.execute()
        except redis.RedisError as exc:
            if in_flight_key is not None:
                # Still in flight: the next start of this node puts it back and
                # screens it again.
                log.error("Could not dead-letter a message (%s); left in flight", exc)
            else:
                # Already popped: the journal is the last place it can be kept.
                log.critical("Could not dead-letter a message (%s): %s", exc, record)
            return True
        log.error(
            "Moved a message from queue %r to %s (%s, %d bytes)",
            queue,
            DEAD_LETTER_KEY,
            problem,
            len(raw),
        )
        return True

    def dead_letter_unacked(self, delivery_tag: str) -> None:
        """Copy a rejected message from the unacked hash to the dead letters."""
        unacked_key = self.unacked_key

        def copy(pipe: Any) -> None:
            stored = pipe.hget(unacked_key, delivery_tag)
            pipe.multi()
            if stored:
                message, _exchange, routing_key = json.loads(stored)
                record = dead_letter_record(
                    json.dumps(message).encode(), "rejected by the worker", routing_key
                )
                _queue_dead_letter(pipe, record)

        with self.conn_or_acquire() as client:
            client.transaction(copy, unacked_key)
        log.error("Moved rejected message %s to %s", delivery_tag, DEAD_LETTER_KEY)

    def restore_orphans(self, queues: Iterable[str]) -> tuple[int, int]:
        """Requeue what this node held; returns (in flight, unacknowledged)."""
        in_flight = 0
        with self.conn_or_acquire() as client:
            for name in self.queue_lists(queues):
                # Back to the end BLMOVE/LMOVE take from: they were next anyway.
                while client.lmove(self.in_flight_key(name), name, "RIGHT", "RIGHT"):
                    in_flight += 1
            tags = client.hkeys(self.unacked_key)
            for tag in tags:
                self.qos.restore_by_tag(tag, client)
        return in_flight, len(tags)


class Transport(kombu_redis.Transport):
    Channel = Channel
    # The message being delivered and its in-flight list, for QoS.append.
    in_flight_delivery: tuple[str, bytes] | None = None


# Every Sentinel channel of this process, for MasterWatch to leave an old primary.
sentinel_channels: "weakref.WeakSet[SentinelChannel]" = weakref.WeakSet()


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """Our channel (atomic delivery, in-flight lists) on a primary found by Sentinel.

    kombu's SentinelChannel only changes how the pools are made (_get_pool and
    its connection class), none of what Channel overrides; each pool asks the
    Sentinels for the primary whenever it opens a connection.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sentinel_channels.add(self)

    def drop_connections_to(self, address: tuple[str, int]) -> int:
        return drop_connections(self._pool, address) + drop_connections(
            self._async_pool, address
        )


class SentinelTransport(Transport, kombu_redis.SentinelTransport):
    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port


def resolve_sentinel_urls_to(transport: str) -> None:
    """Make ``sentinel://`` mean ``transport`` for every connection of this process.

    Celery hands kombu the transport class, but a Sentinel URL list is also a
    list of failover alternates: after a connection error kombu's
    Connection.switch moves to the next URL and takes the transport from its
    scheme again. Without this, a worker back from a failover would consume
    through kombu's own Sentinel transport (a plain BRPOP, no in-flight list,
    refused by the worker's ACL).
    """
    kombu.transport.TRANSPORT_ALIASES["sentinel"] = transport
    # get_transport_cls caches what it resolved.
    getattr(kombu.transport, "_transport_cache", {}).pop("sentinel", None)


class SentinelProducerTransport(SentinelTransport):
    """The web's: a publish retried up to its retry policy, not just once.

    kombu's ensure() gives up after the first successful reconnect unless the
    transport names its recoverable errors. In a switchover that reconnect
    may still reach the old primary, now a replica (READONLY, raised by
    redis-py as a connection error), until every Sentinel's SENTINEL MASTERS
    names the new one; the next attempts reach the new primary.
    """

    recoverable_connection_errors = SentinelTransport.connection_errors
    recoverable_channel_errors = ()


class Consumer(CeleryConsumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Celery acks (drops) what it cannot decode; reject it into the dead letters.
        log.critical(
            "Cannot decode message (%s; content type %r): rejecting it",
            exc,
            message.content_type,
        )
        message.reject()
