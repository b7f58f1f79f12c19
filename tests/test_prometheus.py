"""Temporary: ``tests/transports/test_grpc.py`` imports ``scrape`` and ``value`` from here.

They live in ``tests.support`` now (the Prometheus tests moved to ``tests/exporters/``). After
the transports restructuring merges, point that import at ``tests.support`` and delete this file.
"""

from tests.support import scrape, value

__all__ = ["scrape", "value"]
