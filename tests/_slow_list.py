"""Write tests/slow_tests.txt from the ``--durations=0`` report of a full pytest run.

Usage: python tests/_slow_list.py LOG [LOG ...] [--threshold 3.0]

Every test whose setup + call took at least ``threshold`` seconds in any of the logs is listed (one node
id per line, with its duration); tests/conftest.py marks them ``slow`` so that ``make test-fast``
(``-m "not slow"``) leaves them out.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^\s*([0-9.]+)s (setup|call|teardown)\s+(\S+)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--threshold", type=float, default=3.0)
    args = ap.parse_args(argv)
    total: dict[str, float] = defaultdict(float)
    setup: dict[str, float] = defaultdict(float)
    for log in args.logs:
        per: dict[str, float] = defaultdict(float)
        for ln in log.read_text().splitlines():
            m = LINE.match(ln)
            if m:
                per[m.group(3)] += float(m.group(1))
                if m.group(2) == "setup":
                    setup[m.group(3)] = max(setup[m.group(3)], float(m.group(1)))
        for k, v in per.items():
            total[k] = max(total[k], v)
    slow = sorted((k for k, v in total.items() if v >= args.threshold), key=lambda k: -total[k])
    out = Path(__file__).with_name("slow_tests.txt")
    # "setup" marks tests whose cost is a shared (module/session) fixture: conftest then marks every
    # test of the module that uses that fixture
    out.write_text(f"# tests marked slow (setup + call >= {args.threshold:.1f} s in a measured run); "
                   "regenerate: python tests/_slow_list.py LOG\n"
                   + "".join(f"{k}  # {total[k]:.1f} s" + (" setup" if setup[k] >= args.threshold else "")
                             + "\n" for k in slow))
    kept = sum(v for k, v in total.items() if k not in slow)
    print(f"{len(slow)} slow tests ({sum(total[k] for k in slow):.0f} s); the rest: {kept:.0f} s")


if __name__ == "__main__":
    main()
