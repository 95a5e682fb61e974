"""Check that carried wheels need nothing the GPU host lacks.

    python scripts/device/wheel_deps.py WHEEL_DIR_OR_FILE... [--host host_packages.txt]

Reads each wheel's ``Requires-Dist`` (skipping extras, evaluating markers for CPython 3.12 on
x86-64 Linux) and reports every requirement that is neither another carried wheel nor in the
host's package list. Exit status 1 when something is missing, or when two wheels carry the
same project (the host's ``pip install --no-deps`` would refuse them).
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

HOST_ENV: dict[str, str] = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def metadata_of(wheel: Path) -> tuple[str, list[str]]:
    """(project name, Requires-Dist lines) from a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode("utf-8", "replace")
    headers = text.split("\n\n", 1)[0].splitlines()
    name = next(line.split(":", 1)[1].strip() for line in headers if line.startswith("Name:"))
    needs = [line.split(":", 1)[1].strip() for line in headers if line.startswith("Requires-Dist:")]
    return name, needs


def needed(requirements: Iterable[str]) -> list[str]:
    """Project names required on the host (no extras; markers evaluated for the host)."""
    out = []
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate(HOST_ENV):
            out.append(canonical(req.name))
    return out


def host_packages(path: Path) -> set[str]:
    lines = path.read_text().splitlines()
    return {canonical(x.strip()) for x in lines if x.strip() and not x.startswith("#")}


def check(wheels: list[Path], host: set[str]) -> list[str]:
    """Problems found, as sentences (empty: the wheels are complete)."""
    problems: list[str] = []
    carried: dict[str, Path] = {}
    for wheel in wheels:
        name, requires = metadata_of(wheel)
        key = canonical(name)
        if key in carried:
            problems.append(f"{name} is carried twice: {carried[key].name} and {wheel.name}")
        carried[key] = wheel
    for wheel in wheels:
        name, requires = metadata_of(wheel)
        for need in needed(requires):
            if need not in carried and need not in host:
                problems.append(f"{name} needs {need}: neither carried nor on the host")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="wheel files or directories")
    parser.add_argument("--host", type=Path, default=Path(__file__).with_name("host_packages.txt"))
    args = parser.parse_args()
    wheels = sorted(w for p in args.paths for w in (p.glob("*.whl") if p.is_dir() else [p]))
    problems = check(wheels, host_packages(args.host))
    for line in problems:
        print(f"wheel_deps: {line}", file=sys.stderr)
    print(f"wheel_deps: {len(wheels)} wheels, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
