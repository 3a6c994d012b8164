"""Rewrite the generated options tables in README.md and docs/options.md.

Both files carry the table between ``<!-- options-table -->`` and
``<!-- /options-table -->``; tests/test_layering.py fails when they drift from
cgikit.RUN_OPTIONS. Run: ``PYTHONPATH=src python3 scripts/gen_docs.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

from cgikit.cli import markdown_table

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- options-table -->\n).*?(<!-- /options-table -->)", re.S)


def main() -> None:
    table = markdown_table()
    for name in ("README.md", "docs/options.md"):
        path = ROOT / name
        text = path.read_text(encoding="utf-8")
        new = BLOCK.sub(lambda m: m.group(1) + table + m.group(2), text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {name}")


if __name__ == "__main__":
    main()
