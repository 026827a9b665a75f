"""``.env.example`` lists every server setting with its default, generated from ``ServerConfig`` so it cannot drift.

Regenerate after adding a setting: ``.venv/bin/python -m tests.deploy.test_env_example``.
"""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from core.config import ServerConfig, settings_table
from tests.helpers.processes import REPO_ROOT

ENV_EXAMPLE = REPO_ROOT / ".env.example"
DEPLOYMENT_MD = REPO_ROOT / "DEPLOYMENT.md"

HEADER = """\
# Every setting of the upload server with its default (generated from core/config.py: do not edit by hand;
# regenerate with `.venv/bin/python -m tests.deploy.test_env_example`).
# Copy to /etc/ros2-upload/server.env (systemd EnvironmentFile) and uncomment what you change:
# keeping defaults commented lets upgrades bring new defaults.
"""

# Read by gunicorn.conf.py and prometheus_client, not by ServerConfig.
PROCESS_SETTINGS = (
    ("GUNICORN_BIND", "0.0.0.0:8080", "Address gunicorn listens on (behind nginx: 127.0.0.1:8080)"),
    ("GUNICORN_WORKERS", "4", "gunicorn worker processes"),
    ("GUNICORN_THREADS", "4", "Threads per gthread worker: concurrent requests = workers x threads"),
    ("GUNICORN_ACCESS_LOG", "", "gunicorn access log file ('-' for stderr; empty: none, nginx logs requests)"),
    (
        "PROMETHEUS_MULTIPROC_DIR",
        "",
        "Per-worker metric files (emptied at start); empty: a fresh temporary folder per gunicorn master",
    ),
)


def render() -> str:
    lines = [HEADER]
    for title, rows in (("server (core/config.py)", settings_table(ServerConfig)), ("processes", PROCESS_SETTINGS)):
        lines.append(f"\n# ===== {title} =====\n")
        for name, default, doc in rows:
            lines.append(f"\n# {doc}\n# {name}={default}\n")
    return "".join(lines)


def test_env_example_is_generated_from_the_config() -> None:
    assert ENV_EXAMPLE.read_text() == render(), "run: .venv/bin/python -m tests.deploy.test_env_example"


def test_every_setting_is_in_the_env_example() -> None:
    names = re.findall(r"^# ([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    expected = [f.metadata["env"] for f in fields(ServerConfig) if "env" in f.metadata]
    assert [n for n in names if n not in dict.fromkeys(p[0] for p in PROCESS_SETTINGS)] == expected


@pytest.mark.parametrize(("name", "default"), [(name, default) for name, default, _ in settings_table(ServerConfig)])
def test_each_listed_default_parses_back_to_the_default(name: str, default: str) -> None:
    field_name = next(f.name for f in fields(ServerConfig) if f.metadata.get("env") == name)
    parsed = ServerConfig.from_env({name: default})
    assert getattr(parsed, field_name) == getattr(ServerConfig(), field_name)


def test_deployment_guide_lists_every_setting() -> None:
    guide = DEPLOYMENT_MD.read_text()
    missing = [name for name, _, _ in settings_table(ServerConfig) if f"`{name}`" not in guide]
    missing += [name for name, _, _ in PROCESS_SETTINGS if f"`{name}`" not in guide]
    assert not missing, f"DEPLOYMENT.md lacks these settings: {missing}"


if __name__ == "__main__":
    ENV_EXAMPLE.write_text(render())
    print(f"wrote {ENV_EXAMPLE}")
