"""The composition root is the only place that builds the service's parts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("api", "models", "workers", "imagesvc", "tests")
BUILDERS = re.compile(r"\b(Database|create_celery|SqlInventory|JobQueue)\(")


def test_only_the_composition_root_builds_parts() -> None:
    builders = {
        f"{path.relative_to(ROOT)}:{number}"
        for folder in SOURCE_DIRS
        for path in (ROOT / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if BUILDERS.search(line) and not line.lstrip().startswith(("def ", "class "))
    }
    assert builders and all(place.startswith("imagesvc/bootstrap.py:") for place in builders), (
        builders
    )


def test_the_api_sends_by_name_without_importing_task_bodies_or_disk_code() -> None:
    probe = (
        "import sys, api.app; "
        "print(sorted(m for m in sys.modules if m in ('workers.tasks', 'workers.disk', "
        "'workers.job_runner')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
