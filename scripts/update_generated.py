#!/usr/bin/env python3
"""Regenerate the budget tables in docs/connection-pool-guide.md from the code (python -m app.budget).

python scripts/update_docs_budget.py          # rewrite the marked sections
python scripts/update_docs_budget.py --check  # exit 1 if the document is out of date (the tests do this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "connection-pool-guide.md"
sys.path.insert(0, str(ROOT / "backend"))


def generated(text: str) -> str:
    from app.budget.__main__ import render, settings_for
    from app.budget.model import budget_from_settings

    def section(match: re.Match[str]) -> str:
        environment = match.group(1)
        table = render(budget_from_settings(settings_for(environment)))
        return f"<!-- budget:{environment} -->\n{table}\n<!-- /budget:{environment} -->"

    return re.sub(r"<!-- budget:(\w+) -->.*?<!-- /budget:\1 -->", section, text, flags=re.DOTALL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    current = DOC.read_text()
    fresh = generated(current)
    if args.check:
        if fresh != current:
            print(f"{DOC} is out of date: run python scripts/update_docs_budget.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
