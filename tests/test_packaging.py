"""The distribution as a user gets it, not as this source tree runs it.

The sdist and the wheel are built from a copy of the tree with ``python -m build`` (isolated,
as a release would be) and must build without a single warning. The wheel is then installed
into a fresh virtualenv, its dependencies fetched by pip, and ``plasma`` is run from there, in
a directory outside the source tree, with nothing of the tree on ``sys.path``: started on the
mock source, one SSE event is read with ``http.client``, and it is stopped by its PID.
"""

from __future__ import annotations

import email.parser
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

import plasma
from tests.support import free_port, port_open, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PACKAGE = ROOT / "src" / "plasma"

# Local state that is no part of the project, left out of the copy the build runs in.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "bench-results",
    ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis",
)  # fmt: skip

WARNING = re.compile(r"warning|deprecat", re.IGNORECASE)


@dataclass
class Dist:
    wheel: Path
    sdist: Path
    output: str  # everything the build printed

    def metadata(self) -> Message:
        with zipfile.ZipFile(self.wheel) as wheel:
            (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
            return email.parser.Parser().parsestr(wheel.read(name).decode())


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus what would leak the source tree or the caller's settings in.

    ``PYTHONDONTWRITEBYTECODE`` goes too: with it, setuptools says byte-compiling is disabled,
    which is about the machine, not the project.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PLASMA_") and k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    }
    env.update(extra)
    return env


def package_data() -> list[str]:
    """Every file of the package that is not Python source, relative to ``src/``."""
    return sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    root = tmp_path_factory.mktemp("packaging")
    tree = root / "source"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCE)
    out = root / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(tree)],
        cwd=root, env=clean_env(), capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Dist(wheel, sdist, output)


@dataclass
class Venv:
    path: Path
    workdir: Path  # an empty directory outside the source tree to run in

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=self.workdir, env=self.env(), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", **extra)


@pytest.fixture(scope="module")
def venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh virtualenv holding the wheel and its dependencies, and nothing of this tree.

    The venv gets no pip of its own (ensurepip alone takes ~10 s here): this environment's pip
    installs into it with ``--python``, resolving the dependencies as any install would.
    """
    root = tmp_path_factory.mktemp("venv")
    path, workdir = root / "venv", root / "work"
    workdir.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(path / "bin" / "python"), "install",
         "--disable-pip-version-check", "-q", str(dist.wheel)],
        cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return Venv(path, workdir)


# --- the build --------------------------------------------------------------------------------


def test_sdist_and_wheel_build_without_warnings(dist: Dist) -> None:
    warnings = [line for line in dist.output.splitlines() if WARNING.search(line)]
    assert not warnings, dist.output
    assert (
        dist.wheel.name
        == f"{PROJECT['name'].replace('-', '_')}-{PROJECT['version']}-py3-none-any.whl"
    )


def test_wheel_and_sdist_hold_the_package_data_and_license(dist: Dist) -> None:
    data = package_data()
    for suffix in (".proto", ".binpb", ".html", "py.typed"):
        assert any(name.endswith(suffix) for name in data), f"no {suffix} in src/plasma"
    with zipfile.ZipFile(dist.wheel) as wheel:
        in_wheel = set(wheel.namelist())
    missing = [name for name in data if name not in in_wheel]
    assert not missing, f"not in the wheel: {missing}"
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in in_wheel)
    with tarfile.open(dist.sdist) as sdist:
        top = dist.sdist.name.removesuffix(".tar.gz")
        in_sdist = {name.removeprefix(f"{top}/") for name in sdist.getnames()}
    for name in ("LICENSE", "README.md", "pyproject.toml", *(f"src/{n}" for n in data)):
        assert name in in_sdist, f"{name} is not in the sdist"


def test_wheel_metadata_is_what_an_index_page_needs(dist: Dist) -> None:
    meta = dist.metadata()
    assert meta["Name"] == PROJECT["name"] == plasma.DISTRIBUTION
    assert meta["Name"] != "plasma", "`plasma` on the package index is another project"
    assert meta["Version"] == PROJECT["version"]
    assert meta["License-Expression"] == "MIT"
    assert meta["License"] is None, "the license is an SPDX expression, not free text"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier") or []
    for wanted in (
        "Framework :: AsyncIO",
        "Topic :: Internet :: WWW/HTTP",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ):
        assert wanted in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], "SPDX says the license"
    assert "sse" in (meta["Keywords"] or "").split(",")
    for url in meta.get_all("Project-URL") or []:
        _label, address = url.split(", ", 1)
        assert address.startswith("https://"), url
        assert not re.search(r"example|your-|TODO|<|>", address), url
    assert meta["Requires-Python"] == PROJECT["requires-python"]
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# plasma\n"), "the index page shows the README"


# --- the installed wheel ----------------------------------------------------------------------


def test_installed_plasma_comes_from_the_venv_not_the_source_tree(venv: Venv) -> None:
    result = venv.run(
        "python", "-c", "import json, sys, plasma; print(json.dumps([plasma.__file__, sys.path]))"
    )
    assert result.returncode == 0, result.stderr
    where, path = json.loads(result.stdout)
    assert Path(where).is_relative_to(venv.path), where
    assert not [p for p in path if p and Path(p).resolve().is_relative_to(ROOT)], path


def test_installed_version_is_the_pyproject_version(venv: Venv) -> None:
    result = venv.run(str(venv.bin / "plasma"), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"plasma {PROJECT['version']}\n"


def test_installed_plasma_serves_an_sse_event_from_the_mock_source(venv: Venv) -> None:
    port = free_port()
    env = venv.env(
        PLASMA_PORT=str(port), PLASMA_HOST="127.0.0.1", PLASMA_SUBSCRIBER_MOCK_INTERVAL="100ms"
    )
    log = venv.workdir / "plasma.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(venv.bin / "plasma")], cwd=venv.workdir, env=env, stdout=out, stderr=out
        )
    try:
        wait_for(lambda: proc.poll() is not None or port_open(port), 20, what="plasma to listen")
        assert proc.poll() is None, log.read_text()
        fields = read_one_sse_event(port, "program")
        assert "id" in fields, fields
        event = json.loads(fields["data"])
        assert event["meta"]["type"] == "program", event
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def read_one_sse_event(port: int, event_type: str) -> dict[str, str]:
    """The fields of the first event frame on ``/?eventType=<event_type>``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", f"/?eventType={event_type}", headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/event-stream")
        fields: dict[str, str] = {}
        while True:
            line = response.readline().decode().rstrip("\r\n")
            if not line:
                if "data" in fields:
                    return fields
                fields.clear()  # the opening `retry:` frame, or a comment
                continue
            name, _, value = line.partition(":")
            if name:
                fields[name] = value.removeprefix(" ")
    finally:
        conn.close()


# --- the version, written once ----------------------------------------------------------------


def test_a_source_checkout_never_installed_reads_the_version_from_pyproject(
    tmp_path: Path,
) -> None:
    """No metadata to read (``-S``: no site-packages): pyproject.toml beside ``src/`` is used."""
    shutil.copytree(PACKAGE, tmp_path / "src" / "plasma", ignore=NOT_SOURCE)
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "{PROJECT["name"]}"\nversion = "9.8.7"\n'
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import plasma; print(plasma.__version__)"],
        cwd=tmp_path, env=clean_env(PYTHONPATH=str(tmp_path / "src")),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "9.8.7\n"


def test_this_environment_reports_the_pyproject_version() -> None:
    assert PROJECT["name"] == plasma.DISTRIBUTION
    assert plasma.__version__ == PROJECT["version"]
