"""plasma's Python client: subscribe to events (SSE or gRPC) and publish them.

```python
import plasma.client

async with plasma.client.Subscriber("http://localhost:8080", ["program:1234"]) as sub:
    async for event in sub:          # Event(id, type, data), or a Gap when events were lost
        print(event)

for event in plasma.client.subscribe("http://localhost:8080", ["program"]):  # in a script
    print(event)

plasma.client.publish("http://localhost:8080", "program:1234:views", {"views": 42})
```

It needs only what plasma installs (aiohttp, redis-py, orjson); ``transport="grpc"`` also
needs grpcio (``pip install 'plasma-push[grpc]'``). It imports nothing of the server.
"""

from __future__ import annotations

from plasma.client._errors import (
    ClientError,
    ClosedError,
    ConnectError,
    PublishError,
    SubscribeError,
)
from plasma.client._models import GAP_TYPE, Event, Gap
from plasma.client._publisher import EventLike, Publisher, encode_event, publish, publish_many
from plasma.client._subscriber import GapHandler, Subscriber, subscribe

__all__ = [
    "GAP_TYPE",
    "ClientError",
    "ClosedError",
    "ConnectError",
    "Event",
    "EventLike",
    "Gap",
    "GapHandler",
    "PublishError",
    "Publisher",
    "SubscribeError",
    "Subscriber",
    "encode_event",
    "publish",
    "publish_many",
    "subscribe",
]
