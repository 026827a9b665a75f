"""The shipped systemd units verify cleanly, are hardened, and run commands that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from core.config import ServerConfig
from tests.deploy.test_env_example import PROCESS_SETTINGS
from tests.helpers.processes import PYTHON, REPO_ROOT

SYSTEMD_DIR = REPO_ROOT / "systemd"
INSTALL_ROOT = "/opt/ros2-upload"
SERVER_UNIT = "ros2-upload-server.service"
UNITS = sorted(p.name for p in SYSTEMD_DIR.iterdir() if p.suffix in (".service", ".timer"))
SERVICES = [u for u in UNITS if u.endswith(".service")]
MAX_EXPOSURE = 3.0


def directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (SYSTEMD_DIR / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with the install root pointing at this checkout, whose .venv binaries exist (verify needs them)."""
    target = tmp_path_factory.mktemp("units")
    for unit in UNITS:
        text = (SYSTEMD_DIR / unit).read_text()
        if unit.endswith(".service"):
            assert INSTALL_ROOT in text, unit
        (target / unit).write_text(text.replace(INSTALL_ROOT, str(REPO_ROOT)))
    return target


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_without_any_output(installed: Path, unit: str) -> None:
    """systemd-analyze exits 0 even on unknown keys but prints them: any output is a failure."""
    result = systemd_analyze("verify", "--man=no", str(installed / unit))
    assert result.returncode == 0
    assert result.stdout + result.stderr == ""


def exposure(installed: Path, unit: str) -> float:
    result = systemd_analyze("security", "--offline=true", "--no-pager", str(installed / unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_server_unit_exposure_is_at_most_3_and_documented(installed: Path) -> None:
    score = exposure(installed, SERVER_UNIT)
    assert score <= MAX_EXPOSURE
    documented = f"{score:.1f} OK"
    assert documented in (SYSTEMD_DIR / SERVER_UNIT).read_text()
    assert f"exposure {score:.1f}" in (REPO_ROOT / "DEPLOYMENT.md").read_text()


@pytest.mark.parametrize("unit", SERVICES)
def test_every_service_is_hardened(unit: str) -> None:
    d = directives(unit)
    assert d["User"]
    assert d["User"][0] != "root"
    assert "DynamicUser" not in d  # a large store must not be re-chowned
    assert d["ProtectSystem"] == ["strict"]
    assert d["ReadWritePaths"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["PrivateTmp"] == ["yes"]
    assert d["RestrictAddressFamilies"]
    assert d["EnvironmentFile"][0].startswith("/etc/ros2-upload/")
    if d["Type"] != ["oneshot"]:
        assert d["Restart"] == ["on-failure"]


def test_only_the_storage_root_is_writable_for_the_server() -> None:
    assert directives(SERVER_UNIT)["ReadWritePaths"] == ["/var/lib/ros2-upload"]


def test_server_runs_gunicorn_with_the_shipped_config_and_no_control_socket() -> None:
    (exec_start,) = directives(SERVER_UNIT)["ExecStart"]
    assert f"-c {INSTALL_ROOT}/gunicorn.conf.py upload_server:app" in exec_start
    result = subprocess.run(
        [PYTHON, "-c", "import runpy; print(runpy.run_path('gunicorn.conf.py')['control_socket_disable'])"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "True"


@pytest.mark.parametrize("unit", ["ros2-upload-sweep.service", "ros2-upload-backup.service"])
def test_admin_job_command_lines_exist(unit: str, tmp_path: Path) -> None:
    """The flask subcommand a timer runs is real: `--help` of exactly that command line succeeds."""
    (exec_start,) = directives(unit)["ExecStart"]
    argv = exec_start.replace(INSTALL_ROOT, str(REPO_ROOT)).split()
    result = subprocess.run(
        [*argv, "--help"],
        cwd=REPO_ROOT,
        env={"UPLOAD_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


@pytest.mark.parametrize("unit", ["ros2-bag-recorder.service", "ros2-bag-uploader.service"])
def test_robot_units_run_existing_modules(unit: str) -> None:
    (exec_start,) = directives(unit)["ExecStart"]
    module = exec_start.split(" -m ")[1].split()[0]
    result = subprocess.run(
        [PYTHON, "-c", f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"],
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, module


def env_file(name: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (SYSTEMD_DIR / name).read_text().splitlines() if re.match(r"^[A-Z]", line))
    return dict(pairs)


def test_server_environment_file_example_is_valid_configuration() -> None:
    env = env_file("server.env.example")
    known = {name for name, _, _ in PROCESS_SETTINGS} | {
        f.metadata["env"] for f in ServerConfig.__dataclass_fields__.values() if "env" in f.metadata
    }
    assert set(env) <= known, set(env) - known
    config = ServerConfig.from_env(env)
    assert str(config.upload_dir) in directives(SERVER_UNIT)["ReadWritePaths"]
    assert env["GUNICORN_BIND"].startswith("127.0.0.1:")  # only nginx reaches gunicorn
