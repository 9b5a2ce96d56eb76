#!/usr/bin/env python3
"""Check that every runtime dependency of edgeface installs on the boards as a binary wheel.

For each target (Raspberry Pi OS bookworm: aarch64, CPython 3.11, glibc 2.36; JetPack 6 / Ubuntu
22.04: aarch64, CPython 3.10, glibc 2.35), runs

    pip download --only-binary=:all: --platform manylinux2014_aarch64 \\
        --platform manylinux_2_17_aarch64 ... --platform manylinux_2_<glibc>_aarch64 \\
        --python-version 3.11 --implementation cp -d <temp> <every dependency in pyproject.toml>

(pip takes --platform literally, so every manylinux tag the board's glibc accepts is listed) and
prints the wheel found for each package, transitive ones included. Nothing is installed.

Exit status: 0 when every package has a wheel on every target, 1 when one is missing (the lines
marked MISSING name it), 2 when pip cannot reach the package index.

    python tools/check_aarch64_wheels.py [--target 3.11] [--target 3.10]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


@dataclass(frozen=True)
class Target:
    python: str
    glibc_minor: int
    board: str

    def platforms(self) -> list[str]:
        return ["manylinux2014_aarch64"] + [f"manylinux_2_{minor}_aarch64" for minor in range(17, self.glibc_minor + 1)]

    def marker_environment(self) -> dict[str, str]:
        return {
            "python_version": self.python, "python_full_version": f"{self.python}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "platform_system": "Linux", "sys_platform": "linux", "os_name": "posix", "platform_machine": "aarch64",
        }


TARGETS = {
    "3.11": Target("3.11", 36, "Raspberry Pi OS bookworm (glibc 2.36)"),
    "3.10": Target("3.10", 35, "JetPack 6 / Ubuntu 22.04 (glibc 2.35)"),
}

_NETWORK_ERRORS = re.compile(
    r"(Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|Connection refused|ConnectTimeoutError|ReadTimeoutError|ProxyError|"
    r"Could not fetch URL|SSLError)",
)


class IndexUnreachable(Exception):
    pass


def runtime_requirements(target: Target, pyproject: Path = PYPROJECT) -> list[Requirement]:
    """`[project].dependencies` whose markers hold on the target."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    requirements = [Requirement(text) for text in dependencies]
    environment = target.marker_environment()
    return [r for r in requirements if r.marker is None or Marker(str(r.marker)).evaluate(environment)]


def pip_download(target: Target, requirements: list[str], directory: Path, *, no_deps: bool) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
        *(f"--platform={tag}" for tag in target.platforms()),
        f"--python-version={target.python}", "--implementation=cp", "-d", str(directory), "--progress-bar=off",
        *(["--no-deps"] if no_deps else []), *requirements,
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0 and _NETWORK_ERRORS.search(result.stdout + result.stderr):
        first = _NETWORK_ERRORS.search(result.stdout + result.stderr)
        raise IndexUnreachable(f"pip cannot reach the package index ({first.group(0) if first else 'network error'})")
    return result


def wheels_in(directory: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(directory.rglob("*.whl")):
        name, *_ = parse_wheel_filename(path.name)
        found[canonicalize_name(name)] = path.name
    return found


def check_target(target: Target, pyproject: Path = PYPROJECT) -> tuple[list[str], list[str]]:
    """(report lines, missing package names) for one target."""
    requirements = runtime_requirements(target, pyproject)
    lines: list[str] = []
    missing: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeface-wheels-") as temp:
        directory = Path(temp)
        result = pip_download(target, [str(r) for r in requirements], directory, no_deps=False)
        if result.returncode != 0:
            # Find which requirement has no wheel: each one alone, without its dependencies.
            for requirement in requirements:
                alone = directory / canonicalize_name(requirement.name)
                alone.mkdir()
                pip_download(target, [str(requirement)], alone, no_deps=True)
        found = wheels_in(directory)
        direct = {canonicalize_name(r.name) for r in requirements}
        for requirement in requirements:
            key = canonicalize_name(requirement.name)
            if key in found:
                lines.append(f"  ok       {requirement.name:<34} {found[key]}")
            else:
                lines.append(f"  MISSING  {requirement.name:<34} no aarch64 wheel for CPython {target.python} ({requirement})")
                missing.append(requirement.name)
        for key, wheel in found.items():
            if key not in direct:
                lines.append(f"  ok       {key + ' (dependency)':<34} {wheel}")
        if result.returncode != 0 and not missing:  # every direct one has a wheel: a dependency lacks one
            last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
            lines.append(f"  MISSING  a dependency: {last}")
            missing.append("(a dependency)")
    return lines, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="Python version to check (default: 3.11 and 3.10)")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT, help=f"project file (default {PYPROJECT})")
    args = parser.parse_args(argv)
    if not args.pyproject.is_file():
        print(f"check_aarch64_wheels: error: {args.pyproject} does not exist", file=sys.stderr)
        return 2
    failed = False
    try:
        for version in args.target or ["3.11", "3.10"]:
            target = TARGETS[version]
            lines, missing = check_target(target, args.pyproject)
            print(f"CPython {target.python} aarch64, {target.board}: "
                  f"{'all wheels found' if not missing else 'MISSING ' + ', '.join(missing)}")
            print("\n".join(lines), flush=True)
            failed |= bool(missing)
    except IndexUnreachable as error:
        print(f"check_aarch64_wheels: error: {error}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
