"""``python -m netsip``: the ``netsip`` command (see :mod:`netsip.cli`)."""

from __future__ import annotations

import sys

from netsip.cli import main

if __name__ == "__main__":
    sys.exit(main())
