"""The Dockerfile and docker-compose.yml, checked as far as a machine without Docker allows.

The files are parsed; the image's runtime layout (a virtualenv at the image's venv path with
plasma installed by pip from the files the Dockerfile copies) is rebuilt in a temp dir; then the
image's exact CMD and HEALTHCHECK commands run against it with the image's ENV and the compose
file's environment, pointed at the test's redis-server.

By default the virtualenv gets plasma's wheel only, and borrows the dependencies from the test
environment (a full install fetches ~15 packages and takes ~20 s); set
``TEST_DEPLOY_FULL_INSTALL=1`` to run the Dockerfile's own ``pip install .`` unchanged.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from plasma.config import SETTINGS
from tests.support import RedisServer, SSEStream, free_port, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
VENV = "/opt/plasma"  # where the Dockerfile builds the virtualenv


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"the stage from {self.base} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                name, sep, value = token.partition("=")
                assert sep, f"use ENV NAME=value: {args!r}"
                out[name] = value
        return out


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile: comments dropped, continuations joined, ARG defaults applied."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest)
            image, _, name = base.partition(" AS ")
            stages.append(Stage(image.strip(), name.strip()))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def exec_form(args: str) -> list[str]:
    command = json.loads(args)
    assert isinstance(command, list), f"use the exec (JSON) form: {args!r}"
    return [str(part) for part in command]


def healthcheck_command(args: str) -> list[str]:
    options, sep, command = args.partition("CMD ")
    assert sep, args
    assert "--timeout=" in options and "--interval=" in options
    return exec_form(command)


def dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, "**/" + pattern) for p in prefixes
        ):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


# --- the files themselves ------------------------------------------------------------------------


def test_dockerfile_is_small_multi_stage_pinned_and_non_root(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "build and runtime stages"
    build, runtime = stages[0], stages[-1]
    for stage in stages:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.base)
    assert runtime.base == build.base, "the venv is copied between identical Pythons"
    user = runtime.last("USER")
    assert user not in ("root", "0"), "runs as a non-root user"
    assert any(user in args for args in runtime.all("RUN")), "the user is created in the image"
    assert runtime.last("EXPOSE") == "8080"
    assert any(f"--from={build.name}" in args and VENV in args for args in runtime.all("COPY"))
    assert not any("apt-get" in args or "pip" in args for args in runtime.all("RUN"))
    assert "/hc" in runtime.last("HEALTHCHECK")
    assert runtime.env()["PATH"].startswith(f"{VENV}/bin:")


def test_dockerfile_documents_settings_with_their_real_defaults(stages: list[Stage]) -> None:
    defaults = {s.name: s.default for s in SETTINGS}
    secret = {s.name for s in SETTINGS if s.secret}
    env = stages[-1].env()
    documented = {k: v for k, v in env.items() if k.startswith("PLASMA_")}
    assert len(documented) >= 10
    for name, value in documented.items():
        assert name in defaults, f"{name} is not a plasma setting"
        assert name not in secret, f"{name} is a secret: never bake it into an image"
        assert value == defaults[name], (
            f"{name}={value!r} but plasma's default is {defaults[name]!r}"
        )


def test_build_context_keeps_what_the_dockerfile_copies(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for ignored in (".git", ".venv", "tests", "src/plasma/__pycache__/x.pyc"):
        assert dockerignored(ignored, patterns), f"{ignored} should stay out of the context"
    for args in stages[0].all("COPY"):
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not dockerignored(source, patterns), f"{source} is copied but ignored"


def test_compose_wires_plasma_to_a_healthy_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis, plasma = services["redis"], services["plasma"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-\w+)?", redis["image"])
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert plasma["build"] == "."
    assert plasma["depends_on"]["redis"]["condition"] == "service_healthy"
    env = {k: str(v) for k, v in plasma["environment"].items()}
    assert env["PLASMA_SUBSCRIBER_TYPE"] == "redis"
    assert env["PLASMA_SUBSCRIBER_REDIS_ADDR"].split(":")[0] == "redis"
    assert env["PLASMA_SUBSCRIBER_REDIS_CHANNELS"]
    assert "8080:8080" in plasma["ports"]
    for name, service in services.items():
        if service.get("profiles"):
            continue
        assert "image" in service or "build" in service, name
    for service in services.values():  # optional services mount files that exist
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


# --- the image's commands against the image's layout ---------------------------------------------


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory, stages: list[Stage]) -> Iterator[Path]:
    """A directory laid out as the runtime image: ``<root>/opt/plasma`` and a work dir."""
    root = tmp_path_factory.mktemp("image")
    context = root / "context"
    for args in stages[0].all("COPY"):
        *sources, _dest = shlex.split(args)
        for source in sources:
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(
                    src,
                    context / source,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                )
            else:
                context.mkdir(exist_ok=True)
                shutil.copy(src, context / source)
    build_run = " ".join(stages[0].all("RUN"))
    assert f"python -m venv {VENV}" in build_run and f"{VENV}/bin/pip install ." in build_run
    venv = root / VENV.lstrip("/")
    python = str(venv / "bin" / "python")
    if os.environ.get("TEST_DEPLOY_FULL_INSTALL") == "1":
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "."], cwd=context, check=True)
    else:
        # The same `pip install .` (build plasma's wheel, install it), minus the dependencies
        # and the venv's own pip (ensurepip alone takes ~10 s here): this environment's pip
        # builds the wheel and installs it into the venv.
        wheels = root / "wheels"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", str(wheels), "."],
            cwd=context, check=True, timeout=300,
        )  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
             "--no-index", *map(str, wheels.glob("plasma_push-*.whl"))],
            check=True, timeout=300,
        )  # fmt: skip
        site = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        # Dependencies only: plasma itself comes from the install above, first on sys.path.
        Path(site, "_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (root / "work").mkdir()
    yield root


def image_env(root: Path, stages: list[Stage], compose: dict[str, Any]) -> dict[str, str]:
    """The container's environment: image ENV, then compose's, with paths mapped into ``root``."""
    env = {"HOME": str(root / "work"), "LANG": "C.UTF-8"}
    for name, value in stages[-1].env().items():
        if name == "PATH":
            value = value.replace(VENV, str(root / VENV.lstrip("/")))
            value = value.replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
        env[name] = value
    env.update({k: str(v) for k, v in compose["services"]["plasma"]["environment"].items()})
    return env


def test_image_command_and_healthcheck_run_the_compose_setup(
    image_root: Path,
    stages: list[Stage],
    compose: dict[str, Any],
    redis_server: RedisServer,
) -> None:
    runtime = stages[-1]
    env = image_env(image_root, stages, compose)
    channel = env["PLASMA_SUBSCRIBER_REDIS_CHANNELS"].split(",")[0]
    port = free_port()
    # The test's redis-server stands in for the "redis" service; loopback only.
    env.update(
        PLASMA_SUBSCRIBER_REDIS_ADDR=redis_server.addr,
        PLASMA_PORT=str(port),
        PLASMA_HOST="127.0.0.1",
    )
    workdir = image_root / "work"
    where = subprocess.run(
        ["python", "-c", "import plasma; print(plasma.__file__)"],
        env=env, cwd=workdir, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(image_root)), f"plasma must come from the image's venv: {where}"
    healthcheck = healthcheck_command(runtime.last("HEALTHCHECK"))

    def healthy() -> bool:
        result = subprocess.run(healthcheck, env=env, cwd=workdir, capture_output=True, timeout=10)
        return result.returncode == 0

    log = (workdir / "plasma.log").open("wb")
    proc = subprocess.Popen(
        exec_form(runtime.last("CMD")), env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: proc.poll() is not None or healthy(), 15, 0.2, "the health check")
        assert proc.poll() is None, (workdir / "plasma.log").read_text()
        wait_for(lambda: redis_server.numsub(channel) > 0, what="plasma to subscribe")
        _stream_one_event(f"http://127.0.0.1:{port}", redis_server, channel)
        redis_server.stop()
        wait_for(lambda: not healthy(), 15, 0.2, "the health check to fail without Redis")
        assert getattr(signal, runtime.last("STOPSIGNAL")) == signal.SIGTERM
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _stream_one_event(url: str, redis_server: RedisServer, channel: str) -> None:
    import asyncio

    async def run() -> None:
        stream = await SSEStream.open(url + "/", "program:1234")
        try:
            await stream.wait_retry()
            redis_server.publish(channel, {"meta": {"type": "program:1234:views"}, "data": 7})
            assert (await stream.next_event()).json()["data"] == 7
        finally:
            await stream.close()

    asyncio.run(run())
