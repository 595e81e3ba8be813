"""Redis keys of the stack's own, next to kombu's and Celery's.

'@' cannot appear in a queue name, so these keys never match a queue's ACL
pattern (~QUEUE, ~QUEUE:*) and no queue can take their name.
"""

DEAD_LETTER_KEY = "stack@dead-letters"
DEAD_LETTER_TOTAL_KEY = "stack@dead-letters-total"
# kombu transport option -> key prefix; the worker node name completes the key.
UNACKED_KEY_PREFIXES = {
    "unacked_key": "unacked@",
    "unacked_index_key": "unacked_index@",
    "unacked_mutex_key": "unacked_mutex@",
}
# Where a message waits between leaving its queue list and being recorded as
# unacknowledged: IN_FLIGHT_KEY_PREFIX + node + "@" + queue list, one list each.
IN_FLIGHT_KEY_PREFIX = "inflight@"
IN_FLIGHT_OPTION = "in_flight_key_prefix"
