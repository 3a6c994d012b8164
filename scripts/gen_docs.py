"""Rewrite the generated options tables in README.md and docs/*options.md.

Each file carries its table between ``<!-- options-table -->`` and
``<!-- /options-table -->``; tests/test_layering.py fails when the first two drift from
cgikit.RUN_OPTIONS, tests/serve/test_serve_options.py when docs/serve-options.md drifts
from cgikit.site_server.SERVE_OPTIONS, tests/gateways/test_run_gateway.py when
docs/gateway-options.md drifts from cgikit.gateway_options.GATEWAY_OPTIONS.
Run: ``PYTHONPATH=src python3 scripts/gen_docs.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

from cgikit.cli import markdown_table
from cgikit.gateway_options import GATEWAY_OPTIONS
from cgikit.site_server import SERVE_OPTIONS

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- options-table -->\n).*?(<!-- /options-table -->)", re.S)


def main() -> None:
    run_table = markdown_table()
    tables = {
        "README.md": run_table,
        "docs/options.md": run_table,
        "docs/serve-options.md": markdown_table(SERVE_OPTIONS),
        "docs/gateway-options.md": markdown_table(GATEWAY_OPTIONS),
    }
    for name, table in tables.items():
        path = ROOT / name
        text = path.read_text(encoding="utf-8")
        new = BLOCK.sub(lambda m, table=table: m.group(1) + table + m.group(2), text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {name}")


if __name__ == "__main__":
    main()
