"""The stall watchdog on fake time: no progress for stalled_timeout aborts once; progress keeps a transfer alive."""

from __future__ import annotations

from core.client.watchdog import Verdict, Watchdog
from core.client.wire import WireSample
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


class FakeWire:
    """A connection as the kernel would report it; the test moves its counters."""

    def __init__(self) -> None:
        self.acked = 0
        self.unacked = 0
        self.ack_age = 0.0
        self.visible = True
        self.probing: list[bool] = []

    def sample(self) -> WireSample | None:
        return WireSample(self.acked, self.unacked, self.ack_age) if self.visible else None

    def keep_probing(self, on: bool) -> None:
        self.probing.append(on)


def on_the_wire(clock: FakeClock, *, stall_after: float = 5.0):
    aborts: list[str] = []
    dog = Watchdog(clock=clock)
    wire = FakeWire()
    watch = dog.watch("chunk 0 of u1", lambda: aborts.append("abort"), stall_after=stall_after, probe=wire)
    return dog, watch, wire, aborts


def test_bytes_handed_to_the_socket_are_not_progress_while_the_wire_is_visible(clock: FakeClock):
    dog, watch, _wire, aborts = on_the_wire(clock)
    dog.check()

    for _ in range(6):  # the kernel took everything at once, then the peer acknowledged nothing
        clock.advance(1)
        watch.handed(64 * 1024)
        dog.check()

    assert aborts == ["abort"]
    assert watch.verdict is Verdict.STALLED


def test_bytes_the_peer_acknowledges_keep_a_slow_transfer_alive(clock: FakeClock):
    dog, watch, wire, aborts = on_the_wire(clock)
    watch.handed(400 * 1024)  # all of it queued in the kernel at once
    watch.body_sent()
    wire.unacked = 400 * 1024

    for _ in range(100):  # a 32 KB/s link drains it in ~12 s, much longer than stall_after
        clock.advance(0.5)
        wire.acked += 2048
        wire.unacked -= 2048
        dog.check()

    assert aborts == []


def test_while_the_reply_is_awaited_a_peer_that_answers_keepalives_is_progress(clock: FakeClock):
    dog, watch, wire, aborts = on_the_wire(clock)
    for _ in range(20):  # a body that took 10 s to be acknowledged
        clock.advance(0.5)
        wire.acked += 1024
        dog.check()
    watch.body_sent()

    for step in range(24):  # 12 s for the reply (the server behind a slower hop): more than stalled_timeout
        clock.advance(0.5)
        wire.ack_age = 1.0 + 0.5 * (step % 2)  # keepalive ACKs every second or so
        dog.check()

    assert aborts == []
    assert wire.probing == [True]
    dog.unwatch(watch)
    assert wire.probing == [True, False]


def test_a_peer_that_stops_answering_while_the_reply_is_awaited_is_a_stall(clock: FakeClock):
    dog, watch, wire, aborts = on_the_wire(clock, stall_after=5.0)
    watch.body_sent()
    dog.check()

    fired_at = None
    for _ in range(40):
        clock.advance(0.5)
        wire.ack_age += 0.5  # the link went dark: no keepalive is answered
        if dog.check():
            fired_at = wire.ack_age
            break

    assert aborts == ["abort"]
    # At most one keepalive interval beyond stall_after, plus one check interval.
    assert fired_at is not None
    assert fired_at <= 5.0 + 1.0 + 0.5


def test_without_a_view_of_the_wire_handed_bytes_count_as_progress(clock: FakeClock):
    dog, watch, wire, aborts = on_the_wire(clock)
    wire.visible = False

    for _ in range(20):
        clock.advance(1)
        watch.handed(1024)
        dog.check()

    assert aborts == []


def test_keepalive_answers_count_only_as_long_again_as_the_body_took(clock: FakeClock):
    # A hung proxy: its kernel acknowledged the whole body and answers keepalives, its program forwards nothing.
    dog, watch, wire, aborts = on_the_wire(clock, stall_after=5.0)
    for _ in range(4):  # the body took 2 s
        clock.advance(0.5)
        wire.acked += 1024
        dog.check()
    watch.body_sent()

    waited = 0.0
    while not aborts and waited < 60:
        clock.advance(0.5)
        waited += 0.5
        wire.ack_age = 0.5
        dog.check()

    assert aborts == ["abort"]
    # The body's 2 s again, then stalled_timeout, give or take a check interval either way.
    assert 2.0 + 5.0 <= waited <= 2.0 + 5.0 + 1.5
