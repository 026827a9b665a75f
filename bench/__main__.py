"""``python -m bench [name …] [-- args]``: run benchmark modules by name or prefix (``server`` runs ``server_*``).

Every ``bench/<name>.py`` that defines ``main()`` is a benchmark; with no name, all of them run.
Modules named ``baseline_*`` are the apps the benchmarks compare against, not benchmarks.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])]
    return sorted(n for n in names if not n.startswith(("_", "baseline_")))


def select(wanted: list[str]) -> list[str]:
    names = available()
    if not wanted:
        return names
    chosen = [n for n in names if any(n == w or n.startswith(f"{w}_") for w in wanted)]
    unknown = [w for w in wanted if not any(n == w or n.startswith(f"{w}_") for n in names)]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; available: {', '.join(names)}")
    return chosen


def main() -> None:
    args = sys.argv[1:]
    names, extra = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else (args, [])
    for name in select(names):
        module = importlib.import_module(f"bench.{name}")
        if not hasattr(module, "main"):
            continue
        print(f"== bench.{name}", flush=True)
        sys.argv = [f"bench.{name}", *extra]
        module.main()


if __name__ == "__main__":
    main()
