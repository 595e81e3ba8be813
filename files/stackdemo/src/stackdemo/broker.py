"""The workers' Redis transport: per-node unacked bookkeeping and dead letters.

kombu's Redis transport keeps every delivered, unacknowledged message in one
hash shared by all workers and hands it back only after the visibility
timeout (an hour by default) or at a warm shutdown. A pool that dies hard
(kill -9, OOM, power loss) leaves its tasks there for that hour. Here each
worker node (``pool@host``, one systemd unit) owns its hash: whatever is in
it when the node (re)connects was delivered to a predecessor that is gone,
because systemd never runs two instances of one unit, so the node puts it
back in its queues before it consumes anything.

kombu also decodes what it pops from a queue list without a guard: one
non-JSON string pushed by any producer stops the worker's consumer. Here a
message that is not a kombu envelope, and any message the worker rejects
without requeueing (an undecodable or disallowed body, an unknown task), is
moved to a dead-letter list with the reason, counted, and logged.
"""

import base64
import functools
import json
import logging
import time
from typing import Any

import redis
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from stackdemo.keys import DEAD_LETTER_KEY, DEAD_LETTER_TOTAL_KEY, UNACKED_KEY_PREFIXES

log = logging.getLogger(__name__)


def node_transport_options(nodename: str) -> dict[str, str]:
    """Transport options that give one worker node its own unacked keys."""
    return {
        option: prefix + nodename for option, prefix in UNACKED_KEY_PREFIXES.items()
    }


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
    """Client whose BRPOP replies are screened before kombu decodes them."""

    def __init__(self, *args: Any, screen: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._screen = screen

    def parse_response(self, connection: Any, command_name: str, **options: Any) -> Any:
        response = super().parse_response(connection, command_name, **options)
        if command_name == "BRPOP":
            # An idle consumer gets a reply (nil) every brpop_timeout: proof of life.
            last_brpop_reply["at"] = time.monotonic()
            if response:
                return self._screen(response)
        return response

    def rpop(self, name: Any, count: int | None = None) -> Any:
        # kombu's synchronous get() pops with RPOP (one item, no count).
        item = super().rpop(name, count)
        if count is None and item is not None:
            screened = self._screen((name, item))
            return screened[1] if screened else None
        return item


# When the consumer last got a BRPOP reply; read by the worker's watchdog.
last_brpop_reply: dict[str, float] = {"at": time.monotonic()}

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


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _get_client(self) -> Any:
        return functools.partial(_ScreeningRedis, screen=self._screen_delivery)

    def _screen_delivery(
        self, response: tuple[bytes, bytes]
    ) -> tuple[bytes, bytes] | None:
        source, raw = response
        problem = envelope_problem(raw)
        if problem is None:
            return response
        queue = (
            source.decode("utf-8", "replace") if isinstance(source, bytes) else source
        )
        queue = queue.rsplit(self.sep, 1)[0]
        record = dead_letter_record(raw, f"unreadable message: {problem}", queue)
        try:
            # A pool connection: the BRPOP connection belongs to the poller.
            with self.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=True)
                _queue_dead_letter(pipe, record)
                pipe.execute()
        except redis.RedisError as exc:
            # Already popped: the journal is the last place it can be kept.
            log.critical("Could not dead-letter a message (%s): %s", exc, record)
            return None
        log.error(
            "Moved a message from queue %r to %s (%s, %d bytes)",
            queue,
            DEAD_LETTER_KEY,
            problem,
            len(raw),
        )
        return None

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

    def restore_orphans(self) -> int:
        """Requeue every message in this node's unacked hash; returns how many."""
        with self.conn_or_acquire() as client:
            tags = client.hkeys(self.unacked_key)
            for tag in tags:
                self.qos.restore_by_tag(tag, client)
        return len(tags)


class Transport(kombu_redis.Transport):
    Channel = Channel


class Consumer(CeleryConsumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Celery acks (drops) what it cannot decode; reject it into the dead letters.
        log.critical(
            "Cannot decode message (%s; content type %r): rejecting it",
            exc,
            message.content_type,
        )
        message.reject()
