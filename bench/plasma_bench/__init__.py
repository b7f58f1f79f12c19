"""plasma's own load benchmark: Redis + server + multi-process SSE/gRPC subscribers.

Run it with ``./scripts/bench`` (see ``docs/benchmarks.md``). The package is kept outside
``src/`` on purpose: it is a tool for the repository, not part of the installed server.
"""

__version__ = "0.1.0"
