"""`python -m edgeface.cli ...`: the `edgeface` command."""

from __future__ import annotations

import sys

from edgeface.cli.main import main

sys.exit(main())
