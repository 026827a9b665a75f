"""``.env.example`` lists every server setting with its default, generated from ``ServerConfig`` so it cannot drift.

So is the settings table of DEPLOYMENT.md. Regenerate both after adding a setting:
``.venv/bin/python -m tests.deploy.test_env_example``.
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


BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def render_table() -> str:
    """The settings table of DEPLOYMENT.md (between its settings markers)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, doc in [*settings_table(ServerConfig), *PROCESS_SETTINGS]:
        cell = f"`{default}`" if default else "(empty)"
        rows.append(f"| `{name}` | {cell} | {doc.replace('|', '/')} |")
    return "\n".join(rows)


def deployment_guide(table: str) -> str:
    guide = DEPLOYMENT_MD.read_text()
    before, _, rest = guide.partition(BEGIN)
    _, _, after = rest.partition(END)
    return f"{before}{BEGIN}\n{table}\n{END}{after}"


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


def test_deployment_guide_has_the_same_settings_table() -> None:
    guide = DEPLOYMENT_MD.read_text()
    assert BEGIN in guide
    assert guide == deployment_guide(render_table()), "run: .venv/bin/python -m tests.deploy.test_env_example"


if __name__ == "__main__":
    ENV_EXAMPLE.write_text(render())
    DEPLOYMENT_MD.write_text(deployment_guide(render_table()))
    print(f"wrote {ENV_EXAMPLE} and the settings table of {DEPLOYMENT_MD}")
