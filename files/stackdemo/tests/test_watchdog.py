"""When the worker's watchdog judges its consumer stalled."""

from stackdemo.worker import STALL_SECONDS, consumer_stalled

LATE = 100.0 + STALL_SECONDS + 1


def test_an_idle_consumer_with_recent_replies_is_alive():
    assert not consumer_stalled(100.0, 99.0, running=0, can_consume=True)


def test_an_idle_consumer_without_replies_for_too_long_is_stalled():
    assert consumer_stalled(LATE, 100.0, running=0, can_consume=True)


def test_a_full_pool_running_tasks_is_not_stalled():
    # Every slot taken: kombu stops sending BRPOP on purpose.
    assert not consumer_stalled(LATE, 100.0, running=2, can_consume=False)


def test_a_pool_with_a_free_slot_and_no_replies_is_stalled():
    assert consumer_stalled(LATE, 100.0, running=1, can_consume=True)


def test_an_idle_pool_whose_slots_leaked_is_stalled():
    # No task runs, yet kombu counts every slot as taken: it will never ask again.
    assert consumer_stalled(LATE, 100.0, running=0, can_consume=False)
