"""``python -m bench <case> [args...]``: run the benchmark module ``bench.<case>``.

Each module exposes ``main(argv: list[str]) -> int``; run from the repository root.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def cases() -> list[str]:
    """The benchmark modules beside this one."""
    here = str(Path(__file__).parent)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in cases():
        print(f"usage: python -m bench {{{','.join(cases())}}} [args...]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{argv[0]}")
    code: int = module.main(argv[1:])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
