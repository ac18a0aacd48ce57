"""Release artifacts a user can install: `make dist` builds the chart as `helm
package` makes it, and the Python distribution `switchboard-ws` (sdist, and the wheel
built from it). The wheel goes into a fresh virtualenv and its `switchboard` command
runs.

Offline and fast: the fresh venv gets the wheel with `--no-deps --no-index`, and
its dependencies from this project's venv through a `.pth` line (the project's
site-packages as a plain path: its own .pth files, the editable install's among
them, are not run, so `switchboard` can only come from the wheel). `venv
--system-site-packages` would expose the base interpreter's packages, not the
project venv's."""

from __future__ import annotations

import email.parser
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from tests.chart.render import CHART, ROOT

pytestmark = pytest.mark.timeout(600)

DISTRIBUTION = "switchboard-ws"
VERSION = "0.1.0"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        ["make", "--no-print-directory", "dist", f"DIST={out}", f"VENV={sys.prefix}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_make_dist_builds_the_wheel_the_sdist_and_the_chart(dist: Path) -> None:
    assert sorted(p.name for p in dist.iterdir()) == [
        "switchboard-0.1.0.tgz",
        f"switchboard_ws-{VERSION}-py3-none-any.whl",
        f"switchboard_ws-{VERSION}.tar.gz",
    ]


def test_the_wheel_is_switchboard_ws_with_every_package(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.parser.Parser().parsestr(
            archive.read(f"switchboard_ws-{VERSION}.dist-info/METADATA").decode()
        )
        entry_points = archive.read(f"switchboard_ws-{VERSION}.dist-info/entry_points.txt")
    assert metadata["Name"] == DISTRIBUTION
    assert metadata["Version"] == VERSION
    assert re.search(r"^switchboard = switchboard\.cli[\w.]*:main$", entry_points.decode(), re.M)
    packages = {
        "switchboard": ROOT / "switchboard",
        "edge": ROOT / "edge",
        "switchboard_operator": ROOT / "operator" / "switchboard_operator",
    }
    for package, folder in packages.items():
        modules = {
            f"{package}/{p.relative_to(folder).as_posix()}"
            for p in folder.rglob("*.py")
            if "__pycache__" not in p.parts
        }
        assert modules, package
        assert modules <= names, sorted(modules - names)
    assert {"edge/static/demo.html", "edge/static/switchboard.js"} <= names
    assert not [n for n in names if n.startswith(("tests/", "charts/", "operator/"))]


def test_the_sdist_holds_the_sources_and_no_tests(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "switchboard/cli/main.py", "edge/server.py"} <= names
    assert "operator/switchboard_operator/main.py" in names
    assert not [n for n in names if n.startswith(("tests/", "charts/", ".venv/"))]


def test_the_wheel_installs_into_a_fresh_venv_and_runs(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args: str) -> str:
        result = subprocess.run(
            args, cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    usage = run(str(venv / "bin" / "switchboard"), "--help")
    for command in ("edge", "operator", "drain", "probe", "dev", "token", "channel"):
        assert command in usage, command
    where = run(
        str(python),
        "-c",
        "import importlib.metadata as m, switchboard, edge, switchboard_operator;"
        "print(m.version('switchboard-ws'));"
        "print(switchboard.__file__, edge.__file__, switchboard_operator.__file__)",
    ).split()
    assert where[0] == VERSION
    for path in where[1:]:
        assert path.startswith(site), path  # from the wheel, not the working tree
    schema = run(str(venv / "bin" / "switchboard"), "chart-schema")
    assert schema == (CHART / "values.schema.json").read_text()


def test_the_chart_package_is_the_chart(dist: Path, tmp_path: Path) -> None:
    (archive,) = dist.glob("*.tgz")
    chart = yaml.safe_load(helm.show(str(archive), output_format="chart"))
    assert (chart["name"], chart["version"]) == ("switchboard", "0.1.0")
    assert helm.digest(archive).startswith("sha256:")
    helm.expand(tmp_path, archive)
    unpacked = tmp_path / "switchboard"
    for path in (
        "values.schema.json",
        "README.md",
        "dashboards/switchboard.json",
        "rules/switchboard.rules.yaml",
        "crds/channels.yaml",
        "files/nats-authorization.conf",
    ):
        assert (unpacked / path).read_bytes() == (CHART / path).read_bytes(), path
    report = helm.lint(unpacked, strict=True)
    assert report["errors"] == [], report
    with helm.Chart.load(archive) as loaded:
        assert loaded.render({}, name="sb", namespace="switchboard", is_install=True)
