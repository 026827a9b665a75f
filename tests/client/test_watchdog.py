"""The stall watchdog on fake time: no progress for stalled_timeout aborts once; progress keeps a transfer alive."""

from __future__ import annotations

from core.client.watchdog import Verdict, Watchdog
from tests.client.support import FakeClock


def watched(clock: FakeClock, *, stall_after: float = 60.0, deadline: float | None = None):
    aborts: list[str] = []
    dog = Watchdog(clock=clock)
    watch = dog.watch("chunk 3 of u1", lambda: aborts.append("abort"), stall_after=stall_after, deadline=deadline)
    return dog, watch, aborts


def test_a_transfer_without_progress_is_aborted_after_stalled_timeout(clock: FakeClock):
    dog, watch, aborts = watched(clock)

    clock.advance(59.9)
    assert dog.check() == []
    clock.advance(0.1)
    assert dog.check() == [watch]

    assert aborts == ["abort"]
    assert watch.verdict is Verdict.STALLED


def test_progress_resets_the_stall_timer(clock: FakeClock):
    dog, watch, aborts = watched(clock)

    for _ in range(10):
        clock.advance(50)
        watch.progress()
        dog.check()

    assert aborts == []


def test_a_watch_fires_only_once(clock: FakeClock):
    dog, _watch, aborts = watched(clock, stall_after=1)

    for _ in range(5):
        clock.advance(2)
        dog.check()

    assert aborts == ["abort"]


def test_a_slow_but_moving_transfer_is_cut_at_its_deadline(clock: FakeClock):
    dog, watch, aborts = watched(clock, stall_after=60, deadline=300)

    for _ in range(299):
        clock.advance(1)
        watch.progress()
        dog.check()
    assert aborts == []
    clock.advance(1)
    dog.check()

    assert watch.verdict is Verdict.DEADLINE
    assert aborts == ["abort"]


def test_unwatched_transfers_are_left_alone(clock: FakeClock):
    dog, watch, aborts = watched(clock, stall_after=1)

    dog.unwatch(watch)
    clock.advance(10)

    assert dog.check() == []
    assert aborts == []


def test_abort_all_cuts_every_transfer_for_stop(clock: FakeClock):
    dog, _watch, aborts = watched(clock)
    dog.watch("chunk 4 of u1", lambda: aborts.append("second"), stall_after=60)

    dog.abort_all()

    assert sorted(aborts) == ["abort", "second"]
