"""When the worker's watchdog judges its consumer stalled."""

from stackdemo.worker import STALL_SECONDS, consumer_stalled


def test_an_idle_consumer_with_recent_replies_is_alive():
    assert not consumer_stalled(100.0, 99.0, running=0)


def test_an_idle_consumer_without_replies_for_too_long_is_stalled():
    assert consumer_stalled(100.0 + STALL_SECONDS + 1, 100.0, running=0)


def test_a_pool_running_tasks_is_never_stalled():
    # Every slot taken: kombu stops sending BRPOP on purpose.
    assert not consumer_stalled(100.0 + 10 * STALL_SECONDS, 100.0, running=2)
