"""Continuous operation in miniature: `bench.soak` for 3 minutes on the defaults must hold every promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import soak
from core.network_manager import NetworkManager

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]

# Until the client's heartbeat stops carrying the whole journal (issue 10 item 2: a bounded window,
# NetworkManager.heartbeat_status()), heartbeats outgrow the 64 KiB cap after ~25 bags and the
# server answers 413: this soak reproduces it. The mark lifts itself once that client lands.
HEARTBEAT_CARRIES_HISTORY = not hasattr(NetworkManager, "heartbeat_status")


@pytest.mark.xfail(
    HEARTBEAT_CARRIES_HISTORY, reason="heartbeat carries the whole journal: 413 after ~25 bags", strict=True
)
def test_three_minutes_of_five_robots_on_the_defaults(tmp_path: Path) -> None:
    report = soak.main(["--robots", "5", "--minutes", "3", "--split", "5", "--keep", str(tmp_path / "soak")])

    assert report.problems() == []
    assert report.splits_recorded >= 5 * 30  # 36 splits of 5 s per robot, minus start-up
    assert report.splits_verified == report.splits_recorded
    assert not {code for code in report.status_counts if code == "429" or code == "413" or code >= "500"}
    assert report.heartbeat_rejections == {}
    assert report.samples >= 40
    assert sum(report.offline_samples.values()) == 0
