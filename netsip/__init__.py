"""netsip: the transport layer of Perl's Net::SIP, ported to Python.

The public API is re-exported here; see the module docstrings for details.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
