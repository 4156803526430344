"""The Jetson image's pins (docker/jetson-constraints.txt) against the project's requirements, offline.

CI has no Docker engine and no aarch64 wheel index, so this is a resolver-style check with `packaging`:
every `==` pin satisfies every requirement on that package, every range constraint leaves a version
that the requirements accept, the image's Python satisfies requires-python, torch and torchvision are
a released pair, and NumPy stays below 2 (the jp6/cu126 torch wheels are built against NumPy 1.x).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile.jetson"
CONSTRAINTS = ROOT / "docker" / "jetson-constraints.txt"
# What the Dockerfile before this check pinned (its TORCH_VERSION / TORCHVISION_VERSION defaults, no NumPy cap).
OLD_PINS = "torch==2.3.0\ntorchvision==0.18.0\n"


def image_extras(dockerfile: str) -> list[str]:
    """Extras of the `pip3 install ... .[extras]` line that installs vtpdeploy in the image."""
    m = re.search(r"pip3 install [^\n]*?--constraint \S+ \.(?:\[([^\]]*)\])?(?:\s|$)", dockerfile)
    assert m, "Dockerfile.jetson must install vtpdeploy with the constraints file"
    return [e.strip() for e in (m.group(1) or "").split(",") if e.strip()]


def project_requirements(pyproject: dict, extras: list[str]) -> list[Requirement]:
    reqs = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in pyproject["project"]["optional-dependencies"][extra]]
    return reqs


def parse_constraints(text: str) -> tuple[list[Requirement], str | None]:
    reqs, python = [], None
    for line in text.splitlines():
        if m := re.match(r"#\s*image-python:\s*(\S+)", line):
            python = m.group(1)
        line = line.split("#", 1)[0].strip()
        if line:
            reqs.append(Requirement(line))
    return reqs, python


def _candidates(specs) -> list[Version]:
    """Versions worth trying for a range: every bound named in the specifiers and its neighbours."""
    out = set()
    for spec in specs:
        v = Version(spec.version.replace(".*", ""))
        rel = list(v.release) + [0] * (3 - len(v.release))
        out |= {v, Version(f"{rel[0]}.{rel[1]}.{rel[2] + 1}"), Version(f"{rel[0]}.{rel[1] + 1}.0")}
        if rel[1] > 0:
            out.add(Version(f"{rel[0]}.{rel[1] - 1}.99"))
        if rel[0] > 0:
            out.add(Version(f"{rel[0] - 1}.999.0"))
    return sorted(out)


def conflicts(requirements: list[Requirement], constraints: list[Requirement], python: str | None,
              requires_python: str) -> list[str]:
    """Why the constraints and the requirements cannot be installed together (empty list: they can)."""
    env = {**default_environment(), "python_version": python or "3.10", "python_full_version": f"{python or '3.10'}.0",
           "platform_machine": "aarch64", "sys_platform": "linux", "platform_system": "Linux"}
    reqs = [r for r in requirements if r.marker is None or r.marker.evaluate(env)]
    found = []
    if python is None:
        found.append("constraints file does not name the image's Python (# image-python: X.Y)")
    elif Version(python) not in Requirement(f"python{requires_python}").specifier:
        found.append(f"image Python {python} does not satisfy requires-python {requires_python}")
    by_name: dict[str, list[Requirement]] = {}
    for r in reqs:
        by_name.setdefault(canonicalize_name(r.name), []).append(r)
    pins: dict[str, Version] = {}
    for c in constraints:
        name = canonicalize_name(c.name)
        needed = by_name.get(name, [])
        pinned = [s for s in c.specifier if s.operator in ("==", "===")]
        if pinned:
            v = Version(pinned[0].version)
            pins[name] = v
            for r in needed:
                if not r.specifier.contains(v, prereleases=True):  # an explicit pin admits pre-releases, as pip does
                    found.append(f"{c} conflicts with the project's {r}")
        else:
            allowed = c.specifier
            for r in needed:
                allowed = allowed & r.specifier
            if not any(allowed.contains(v, prereleases=True) for v in _candidates(allowed)):
                found.append(f"{c} leaves no version for the project's {', '.join(map(str, needed))}")
    if "torch" in pins and "torchvision" in pins:
        t, tv = pins["torch"], pins["torchvision"]
        if t.major == 2 and (tv.major, tv.minor) != (0, t.minor + 15):
            found.append(f"torchvision {tv} is not the release paired with torch {t} (0.{t.minor + 15})")
    numpy = [c for c in constraints if canonicalize_name(c.name) == "numpy"]
    if not any(not c.specifier.contains("2.0.0") for c in numpy):
        found.append("numpy is not capped below 2, but the jp6/cu126 torch wheels are built against NumPy 1.x")
    return found


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_jetson_constraints_satisfy_project_requirements(pyproject):
    dockerfile = DOCKERFILE.read_text()
    constraints, python = parse_constraints(CONSTRAINTS.read_text())
    reqs = project_requirements(pyproject, image_extras(dockerfile))
    assert conflicts(reqs, constraints, python, pyproject["project"]["requires-python"]) == []
    # the check looked at what matters: torch is both required and pinned, numpy is capped
    assert {"torch", "torchvision", "numpy"} <= {canonicalize_name(c.name) for c in constraints}
    assert "torch" in {canonicalize_name(r.name) for r in reqs}


def test_old_dockerfile_pins_are_rejected(pyproject):
    """The pins the image used before (torch 2.3.0, NumPy uncapped) fail this check: against today's
    pyproject for the NumPy cap, and against the torch>=2.4 floor the issue was filed under for torch."""
    constraints, _ = parse_constraints(OLD_PINS)
    rp = pyproject["project"]["requires-python"]
    reqs = project_requirements(pyproject, [])
    assert "numpy is not capped below 2, but the jp6/cu126 torch wheels are built against NumPy 1.x" in \
        conflicts(reqs, constraints, "3.10", rp)
    floor_24 = [Requirement("torch>=2.4") if r.name == "torch" else r for r in reqs]
    found = conflicts(floor_24, constraints, "3.10", rp)
    assert "torch==2.3.0 conflicts with the project's torch>=2.4" in found, found


def test_check_catches_each_kind_of_conflict(pyproject):
    reqs = project_requirements(pyproject, [])
    rp = pyproject["project"]["requires-python"]
    ok, _ = parse_constraints(CONSTRAINTS.read_text())
    assert conflicts(reqs, ok, "3.8", rp) == [f"image Python 3.8 does not satisfy requires-python {rp}"]  # JetPack 5
    bad_pair, _ = parse_constraints(CONSTRAINTS.read_text().replace("torchvision==0.20.0", "torchvision==0.19.0"))
    assert conflicts(reqs, bad_pair, "3.10", rp) == ["torchvision 0.19.0 is not the release paired with torch 2.5.0 (0.20)"]
    no_numpy = [Requirement("numpy<1.20"), *[c for c in ok if c.name != "numpy"]]
    found = conflicts(reqs, no_numpy, "3.10", rp)
    assert len(found) == 1 and found[0].startswith("numpy<1.20 leaves no version for the project's numpy>="), found


def test_dockerfile_uses_the_constraints_for_torch_and_for_vtpdeploy():
    text = DOCKERFILE.read_text()
    assert "COPY docker/jetson-constraints.txt" in text
    torch_line = next(ln for ln in text.splitlines() if "--index-url" in ln and "torch" in ln)
    assert "--constraint jetson-constraints.txt" in torch_line and "--no-deps" in torch_line
    assert re.search(r"FROM nvcr\.io/nvidia/l4t-jetpack:\$\{L4T_TAG\}", text)
    assert re.search(r"ARG L4T_TAG=r36\.4\.\d+", text)  # JetPack 6.1/6.2: TensorRT 10.3, CUDA 12.6
    assert "TORCH_VERSION=2.3.0" not in text


def test_x86_image_stays_on_ngc_pytorch():
    assert re.search(r"^FROM nvcr\.io/nvidia/pytorch:\S+-py3$", (ROOT / "Dockerfile").read_text(), re.M)
