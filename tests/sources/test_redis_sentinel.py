"""Redis Sentinel: plasma asks the sentinels for the master and follows it on failover.

Real processes: a master, its replica and a sentinel (``redis-server --sentinel``). Killing
the master makes the sentinel promote the replica; plasma reconnects there without a restart,
and (pub/sub) every open stream gets a gap event.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from tests.brokers import SentinelSetup
from tests.support import PlasmaProcess, SSEStream, async_wait_for, http

pytestmark = pytest.mark.integration


async def test_sentinel_master_is_followed_on_failover(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    setup = SentinelSetup().start()
    try:
        server = plasma(
            PLASMA_SUBSCRIBER_TYPE="redis",
            PLASMA_SUBSCRIBER_REDIS_SENTINELS=setup.sentinels,
            PLASMA_SUBSCRIBER_REDIS_SENTINEL_MASTER=setup.name,
            PLASMA_SUBSCRIBER_REDIS_CHANNELS="events",
            PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="200ms",
        )
        await async_wait_for(lambda: setup.master.numsub("events") == 1, what="subscribed")
        stream = await SSEStream.open(server.url + "/", "f")
        try:
            await stream.wait_retry()
            setup.master.publish("events", {"meta": {"type": "f"}, "data": "on the master"})
            assert (await stream.next_event()).json()["data"] == "on the master"

            setup.master.kill()
            await async_wait_for(
                lambda: setup.master_port() == setup.replica.port, timeout=30, what="failover"
            )
            await async_wait_for(
                lambda: setup.replica.numsub("events") == 1, timeout=15, what="resubscribed"
            )
            gap = await stream.next_event()
            assert gap.event == "gap"
            setup.replica.publish("events", orjson.dumps({"meta": {"type": "f"}, "data": 2}))
            assert (await stream.next_event()).json()["data"] == 2
            assert http(server.url + "/hc").status == 200
        finally:
            await stream.close()
    finally:
        setup.stop()
