"""``pip install .`` gives a robot the client, the recorder and their commands, usable from any folder.

The wheel is built from a copy of the source tree (so the checkout stays clean),
installed into a fresh virtualenv, and used from a folder outside the checkout
against a real server. ``--no-deps``: this machine cannot download the
dependencies, so the fresh venv sees the test venv's site-packages through a
``.pth`` line, after its own (the installed ``core`` must win).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import tomllib

from core.protocol import MiB
from tests.client.support import local_sha256, server_sha256
from tests.helpers.processes import PYTHON, REPO_ROOT

pytestmark = pytest.mark.gunicorn

COMMANDS = ("ros2-bag-upload", "ros2-bag-simulate", "ros2-bag-watch", "ros2-bag-recorder")
SKIP = shutil.ignore_patterns(
    ".*",
    "tests",
    "bench",
    "__pycache__",
    "build",
    "*.egg-info",
    "node_modules",
    "uploads",
    "demo-data",
    "test-artifacts",
)


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the built wheel installed; returns its bin folder."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    shutil.copytree(REPO_ROOT, source, ignore=SKIP)
    built = _run([PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
                  str(source)])  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (root / "dist").glob("ros2_bag_upload-*.whl")
    venv = root / "venv"
    assert _run([PYTHON, "-m", "venv", str(venv)]).returncode == 0
    site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                .stdout.strip())  # fmt: skip
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)])
    assert install.returncode == 0, install.stdout + install.stderr
    return venv / "bin"


def outside_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_installed_package_imports_from_any_folder(installed: Path, tmp_path: Path) -> None:
    code = "import core.network_manager as m; from core.network_manager import NetworkManager; print(m.__file__)"
    found = _run([str(installed / "python"), "-c", code], cwd=tmp_path, env=outside_env())

    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(installed.parent)
    assert not Path(found.stdout.strip()).is_relative_to(REPO_ROOT)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "ros2-bag-recorder"])
def test_every_console_script_is_installed(installed: Path, tmp_path: Path, command: str) -> None:
    helped = _run([str(installed / command), "--help"], cwd=tmp_path, env=outside_env())

    assert helped.returncode == 0, helped.stderr
    assert "usage" in helped.stdout.lower()


def test_the_recorder_script_is_installed_and_names_what_it_needs(installed: Path, tmp_path: Path) -> None:
    from ros_nodes.recorder import EXIT_NO_RCLPY

    ran = _run([str(installed / "ros2-bag-recorder"), "--help"], cwd=tmp_path, env=outside_env())

    # rclpy cannot be installed here: the installed entry point runs and says how to get it.
    assert ran.returncode == EXIT_NO_RCLPY
    assert "rclpy" in ran.stderr


def test_an_installed_client_uploads_from_outside_the_checkout(installed: Path, server, tmp_path: Path) -> None:
    bag = tmp_path / "bag_0001.mcap"
    bag.write_bytes(os.urandom(MiB))
    script = tmp_path / "robot.py"
    # The README's client quick start, verbatim in spirit: api_key=, a listener, wait().
    script.write_text(
        "import sys\n"
        "from core.network_manager import NetworkManager\n"
        "manager = NetworkManager(upload_url=sys.argv[1], api_key=None, state_dir=sys.argv[3])\n"
        "manager.add_listener(lambda e: e.verified and print('verified', e.upload_id))\n"
        "manager.start()\n"
        "job_id = manager.add_upload(file_path=sys.argv[2], priority=1, metadata={'source': 'robot1'})\n"
        "assert manager.wait(timeout=120)\n"
        "manager.close()\n"
    )

    ran = _run([str(installed / "python"), str(script), server.upload_url, str(bag), str(tmp_path / "state")],
               cwd=tmp_path, env=outside_env())  # fmt: skip

    assert ran.returncode == 0, ran.stdout + ran.stderr
    (line,) = [text for text in ran.stdout.splitlines() if text.startswith("verified")]
    assert server_sha256(server.upload_url, line.split()[1]) == local_sha256(bag)
    cli = _run([str(installed / "ros2-bag-upload"), "--state-dir", str(tmp_path / "state"), "status"],
               cwd=tmp_path, env=outside_env())  # fmt: skip
    assert "complete" in cli.stdout


def _requirements(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)(.*)$", line)
        if match and not line.startswith("-"):
            pins[match.group(1).lower()] = match.group(2).strip()
    return pins


def test_the_package_dependencies_match_requirements_txt() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = _requirements((REPO_ROOT / "requirements.txt").read_text())
    declared = _requirements("\n".join([*project["dependencies"], *project["optional-dependencies"]["server"]]))

    assert {name: wanted.get(name) for name in declared} == declared
