"""``python -m cgikit`` is the ``cgikit`` command."""

import sys

from cgikit.cli import main

sys.exit(main())
