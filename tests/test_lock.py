"""backend/uv.lock is the dependency set every install uses, so it must be the one pyproject.toml declares.

Offline and server-free: it reads backend/pyproject.toml and backend/uv.lock only. When it fails after
an edit of pyproject.toml, re-lock: `.venv/bin/uv lock --project backend` (README, "Dependencies").
"""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.support.env import ROOT

RELOCK = "re-lock with `.venv/bin/uv lock --project backend` and commit backend/uv.lock"
PROJECT = tomllib.loads((ROOT / "backend" / "pyproject.toml").read_text())["project"]
LOCK = tomllib.loads((ROOT / "backend" / "uv.lock").read_text())
NAME = canonicalize_name(PROJECT["name"])
(ROOT_PACKAGE,) = [p for p in LOCK["package"] if p["name"] == NAME]
PACKAGES = [p for p in LOCK["package"] if p["name"] != NAME]
# The platform the lock is installed and tested on: python:3.11-slim, the developers' machines and CI.
TARGET = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
TARGET_PLATFORMS = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(40, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
TARGET_TAGS = {
    *cpython_tags((3, 11), platforms=TARGET_PLATFORMS),
    *compatible_tags((3, 11), "cp311", platforms=TARGET_PLATFORMS),
}


def declared() -> dict[str, list[Requirement]]:
    """pyproject.toml's requirements by group: "" for the runtime set, then one per extra."""
    groups = {"": PROJECT["dependencies"], **PROJECT.get("optional-dependencies", {})}
    return {group: [Requirement(r) for r in reqs] for group, reqs in groups.items()}


def locked(name: str) -> list[dict]:
    return [p for p in PACKAGES if p["name"] == canonicalize_name(name)]


def test_the_lock_was_made_from_this_pyproject() -> None:
    # uv records what it resolved: a requirement added, removed, moved between the runtime set and an
    # extra, or given another range (even one the pinned version still meets) makes this differ.
    def key(group: str, name: str, extras, specifier: str) -> str:
        extras = f"[{','.join(sorted(extras))}]" if extras else ""
        return f"{group or 'runtime'}: {canonicalize_name(name)}{extras}{SpecifierSet(specifier)}"

    in_pyproject = {
        key(group, r.name, r.extras, str(r.specifier)) for group, reqs in declared().items() for r in reqs
    }
    in_lock = set()
    for r in ROOT_PACKAGE["metadata"]["requires-dist"]:
        extra = re.search(r"extra == '([^']+)'", r.get("marker", ""))
        in_lock.add(key(extra[1] if extra else "", r["name"], r.get("extras", ()), r.get("specifier", "")))
    assert in_pyproject == in_lock, (
        f"backend/uv.lock was made from another pyproject.toml; {RELOCK}. "
        f"only in pyproject: {sorted(in_pyproject - in_lock)}; "
        f"only in the lock: {sorted(in_lock - in_pyproject)}"
    )
    assert set(ROOT_PACKAGE["metadata"].get("provides-extras", [])) == set(declared()) - {""}, RELOCK
    assert LOCK["requires-python"] == PROJECT["requires-python"], RELOCK


@pytest.mark.parametrize("group", list(declared()), ids=lambda g: g or "runtime")
def test_every_declared_dependency_is_pinned_within_its_range(group: str) -> None:
    entries = (
        ROOT_PACKAGE.get("dependencies", [])
        if group == ""
        else ROOT_PACKAGE.get("optional-dependencies", {}).get(group, [])
    )
    pinned_here = {e["name"]: set(e.get("extra", [])) for e in entries}
    for requirement in declared()[group]:
        name = canonicalize_name(requirement.name)
        assert name in pinned_here, f"{requirement} ({group or 'runtime'}) is not locked; {RELOCK}"
        assert requirement.extras <= pinned_here[name], f"{requirement}: its extras are not locked; {RELOCK}"
        versions = locked(name)
        assert versions, f"{requirement} has no pinned version in backend/uv.lock; {RELOCK}"
        for package in versions:  # one per Python range where uv forked the resolution
            assert requirement.specifier.contains(package["version"], prereleases=True), (
                f"backend/uv.lock pins {name}=={package['version']}, outside {requirement}; {RELOCK}"
            )
            missing = requirement.extras - set(package.get("optional-dependencies", {}))
            assert not missing, f"{name}=={package['version']}: extras {missing} not locked; {RELOCK}"


def test_the_lock_claims_nothing_pyproject_no_longer_declares() -> None:
    names = {group: {canonicalize_name(r.name) for r in reqs} for group, reqs in declared().items()}
    claimed = {"": ROOT_PACKAGE.get("dependencies", []), **ROOT_PACKAGE.get("optional-dependencies", {})}
    for group, entries in claimed.items():
        stale = sorted({e["name"] for e in entries} - names.get(group, set()))
        assert not stale, f"the lock has {stale} in {group or 'runtime'}, pyproject no longer; {RELOCK}"
    # Nor anything nothing needs: every locked package is reached from the backend, any Python, any extra.
    reached, todo = {NAME}, [ROOT_PACKAGE]
    while todo:
        package = todo.pop()
        entries = [*package.get("dependencies", [])]
        for deps in package.get("optional-dependencies", {}).values():
            entries += deps
        for entry in entries:
            if entry["name"] not in reached:
                reached.add(entry["name"])
                todo += locked(entry["name"])
    orphans = {p["name"] for p in PACKAGES} - reached
    assert not orphans, f"backend/uv.lock holds {sorted(orphans)}, which nothing requires; {RELOCK}"


def test_every_locked_file_has_a_hash() -> None:
    assert ROOT_PACKAGE["source"] == {"editable": "."}
    for package in PACKAGES:
        pinned = f"{package['name']}=={package['version']}"
        # Only PyPI: a git, URL or path source would be installed without a hash to check.
        assert package["source"] == {"registry": "https://pypi.org/simple"}, f"{pinned}: {package['source']}"
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files, f"{pinned} lists no file"
        for file in files:
            hashed = re.fullmatch(r"sha256:[0-9a-f]{64}", file.get("hash", ""))
            assert hashed, f"{pinned}: no hash for {file['url']}"


def test_cpython_3_11_on_linux_x86_64_installs_every_package_from_a_wheel() -> None:
    """What the bootstrap and the image install there: the backend with both extras, no build."""

    def applies(entry: dict, extras: set[str]) -> bool:
        marker = entry.get("marker")
        return marker is None or any(Marker(marker).evaluate({**TARGET, "extra": e}) for e in extras or {""})

    def pick(entry: dict) -> dict:
        candidates = [p for p in locked(entry["name"]) if entry.get("version", p["version"]) == p["version"]]
        assert len(candidates) == 1, entry
        return candidates[0]

    installed: dict[str, dict] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(ROOT_PACKAGE, set(declared()) - {""})]
    while todo:
        package, extras = todo.pop()
        if (package["name"], frozenset(extras)) in seen:
            continue
        seen.add((package["name"], frozenset(extras)))
        entries = [*package.get("dependencies", [])]
        for extra in extras:
            entries += package.get("optional-dependencies", {}).get(extra, [])
        for entry in entries:
            if applies(entry, extras):
                dependency = pick(entry)
                installed[dependency["name"]] = dependency
                todo.append((dependency, set(entry.get("extra", []))))
    unreached = {canonicalize_name(r.name) for reqs in declared().values() for r in reqs} - set(installed)
    assert not unreached, f"{sorted(unreached)} not locked for CPython 3.11 on Linux x86_64; {RELOCK}"
    assert "uv" in installed  # the bootstrap installs it first, from this lock
    no_wheel = [
        f"{name}=={package['version']}"
        for name, package in sorted(installed.items())
        if not any(
            TARGET_TAGS & parse_wheel_filename(wheel["url"].rsplit("/", 1)[1])[3]
            for wheel in package.get("wheels", [])
        )
    ]
    assert not no_wheel, f"no CPython 3.11 / Linux x86_64 wheel locked for {no_wheel}: they would be built"
