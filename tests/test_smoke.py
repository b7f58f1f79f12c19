from __future__ import annotations

from tests.support import SSEStream


async def test_redis_publish_reaches_prefix_subscriber(redis_plasma, redis_server):
    server = redis_plasma()
    stream = await SSEStream.open(server.url + "/", "program:1234")
    try:
        assert await stream.wait_retry() == 2000
        redis_server.publish("events", {"meta": {"type": "program:1234:views"}, "data": {"v": 1}})
        event = await stream.next_event()
        assert event.json() == {"meta": {"type": "program:1234:views"}, "data": {"v": 1}}
    finally:
        await stream.close()
