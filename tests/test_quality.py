"""The code stays ruff-clean and passes mypy --strict: checked in the suite, not by memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", "src", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _run(sys.executable, "-m", "ruff", "format", "--check", "src", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    pytest.importorskip("mypy")
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def _readme_layout() -> str:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("\n## Development\n", 1)[1]
    return section.split("```", 2)[1]


def test_readme_layout_names_every_module() -> None:
    """The README's layout names each module of the tree, and nothing that is not there."""
    layout = _readme_layout()
    named = {word for word in layout.split() if word.endswith((".py", ".html")) and "/" not in word}
    package = ROOT / "src" / "plasma"
    present = {
        p.name
        for p in package.rglob("*")
        if p.suffix in (".py", ".html") and p.name not in ("__init__.py", "__main__.py")
    }
    assert present - named == set(), "modules missing from the README layout"
    assert named - present == set(), "the README layout names files that do not exist"


def test_nothing_refers_outside_the_repository() -> None:
    """The project stands alone: no file points at notes kept outside the repository."""
    outside = (".." + "/shared", "DESIGN" + ".md")
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("src", "tests", "docs", "bench", "scripts")
        for p in (ROOT / folder).rglob("*")
        if p.is_file()
        and p.suffix in (".py", ".md", ".toml", ".sh", ".c", ".html", "")
        and any(word in p.read_text("utf-8", "replace") for word in outside)
    ] + [
        name
        for name in ("README.md", "pyproject.toml")
        if any(word in (ROOT / name).read_text("utf-8") for word in outside)
    ]
    assert offenders == []
