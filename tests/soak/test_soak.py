"""Continuous operation in miniature: `bench.soak` for 3 minutes on the defaults must hold every promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import soak

pytestmark = [pytest.mark.gunicorn, pytest.mark.slow]


def test_three_minutes_of_five_robots_on_the_defaults(tmp_path: Path) -> None:
    report = soak.main(["--robots", "5", "--minutes", "3", "--split", "5", "--keep", str(tmp_path / "soak")])

    assert report.problems() == []
    assert report.splits_recorded >= 5 * 30  # 36 splits of 5 s per robot, minus start-up
    assert report.splits_verified == report.splits_recorded
    assert not {code for code in report.status_counts if code == "429" or code == "413" or code >= "500"}
    assert report.heartbeat_rejections == {}
    assert report.samples >= 40
    assert sum(report.offline_samples.values()) == 0
