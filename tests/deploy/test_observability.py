"""Alert rules, the Grafana dashboard, the scrape config and log rotation, checked with the real tools."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from core.server.app import create_app
from core.server.metrics import METRICS_PATH
from tests.helpers.nginx import substitute
from tests.helpers.processes import REPO_ROOT, wait_until
from tests.helpers.servers import GunicornServer

DEPLOY = REPO_ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "ros2-upload-alerts.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "ros2-upload-dashboard.json"
LOGROTATE = DEPLOY / "logrotate" / "ros2-upload"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yml")
CHECKLIST_ALERTS = {"UploadServerDown", "UploadServerErrorRate", "UploadChunkLatencyHigh", "UploadDiskSpaceLow"}
CHECKLIST_ALERTS |= {"UploadsStalled"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, check=False)


def alert_rules() -> list[dict[str, str]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


@pytest.fixture(scope="module")
def exposed_series(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every series name the app's /metrics can produce (histograms expanded to _bucket/_sum/_count)."""
    app = create_app({"upload_dir": tmp_path_factory.mktemp("uploads"), "auth_enabled": False})
    text = app.test_client().get(METRICS_PATH).get_data(as_text=True)
    names: set[str] = {"up"}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE):
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def referenced_series(expr: str) -> set[str]:
    return set(re.findall(r"\b(ros2_upload_[a-z_]+|up)\b(?=\s*[{\[)]|\s*$|\s*[/=<>*])", expr))


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_on_the_checklists_conditions(tmp_path: Path) -> None:
    """promtool's rule unit tests: each alert fires on synthetic series and stays quiet below its threshold."""
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(substitute(ALERT_TESTS.read_text(), {"RULES_FILE": str(ALERTS)}, source=str(ALERT_TESTS)))
    result = promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert {rule["alert"] for rule in alert_rules()} <= tested


def test_the_checklists_alerts_all_exist() -> None:
    assert {rule["alert"] for rule in alert_rules()} >= CHECKLIST_ALERTS


def test_alerts_and_dashboard_use_only_series_the_app_exposes(exposed_series: set[str]) -> None:
    for expr in [rule["expr"] for rule in alert_rules()] + dashboard_exprs():
        used = referenced_series(expr)
        assert used, expr
        assert used <= exposed_series, (expr, used - exposed_series)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query (as a recording rule; Grafana's variables replaced)."""
    exprs = [e.replace("$__rate_interval", "5m").replace("$job", "ros2-upload") for e in dashboard_exprs()]
    rules = {
        "groups": [{"name": "grafana", "rules": [{"record": f"panel:q{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_panels_have_unique_ids_and_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert "datasource" in {v["name"] for v in dashboard["templating"]["list"]}


def test_scrape_config_passes_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(ALERTS.read_text())
    key = tmp_path / "key"
    key.write_text("test-key")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        substitute(
            SCRAPE_CONFIG.read_text(),
            {"/etc/prometheus/rules/ros2-upload-alerts.yml": str(rules), "/etc/prometheus/ros2-upload.key": str(key)},
            source=str(SCRAPE_CONFIG),
        )
    )
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.gunicorn
def test_logrotate_rotates_the_access_log_and_gunicorn_reopens_it(tmp_path: Path) -> None:
    """Real logrotate with the shipped config; the systemctl call is replaced by the same signal to our PID."""
    logs = tmp_path / "logs"
    logs.mkdir()
    server = GunicornServer(tmp_path / "uploads", workers=1, env={"GUNICORN_ACCESS_LOG": str(logs / "access.log")})
    with server:
        requests.get(server.url + "/health?before-rotation", timeout=5)
        wait_until(lambda: "before-rotation" in (logs / "access.log").read_text(), 10, what="first access line")
        assert server.process is not None
        config = tmp_path / "logrotate.conf"
        config.write_text(
            substitute(
                LOGROTATE.read_text(),
                {
                    "/var/log/ros2-upload/": f"{logs}/",
                    "create 0640 ros2upload adm": "create 0640 root root",
                    "systemctl kill --kill-whom=main --signal=USR1 ros2-upload-server.service": (
                        f"kill -USR1 {server.process.pid}"
                    ),
                },
                source=str(LOGROTATE),
            )
        )
        result = subprocess.run(
            ["logrotate", "--force", "--state", str(tmp_path / "state"), str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)  # USR1 is handled asynchronously by the gunicorn master
        requests.get(server.url + "/health?after-rotation", timeout=5)
        wait_until(lambda: "after-rotation" in (logs / "access.log").read_text(), 10, what="line in the new log")
    assert "before-rotation" in (logs / "access.log.1").read_text()
    assert "before-rotation" not in (logs / "access.log").read_text()
