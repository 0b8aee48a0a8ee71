"""Checks that the installed versions are a constraints file's pins.

Usage: ``python .ci/check_pins.py .github/constraints-lowest.txt``. Prints each
pinned distribution with its installed version; exits 1 if any differs.
"""

import sys
from importlib.metadata import version

from packaging.requirements import Requirement


def main(path: str) -> int:
    wrong = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            req = Requirement(line)
            installed = version(req.name)
            ok = req.specifier.contains(installed, prereleases=True)
            print(f"{req.name:<20} {installed:<12} {'ok' if ok else 'NOT ' + line}")
            if not ok:
                wrong.append(line)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
