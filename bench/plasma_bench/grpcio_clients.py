"""Idle gRPC streams from real grpcio clients, for the ``grpc-idle`` scenario's memory figure.

The bench's own gRPC subscribers speak HTTP/2 through ``h2`` with settings of their own; what a
server keeps per connection also depends on what the client sends (its SETTINGS, header
indexing, pings), so the idle-memory figure is taken with the client applications use. Each
process runs ``python -m plasma_bench.grpcio_clients HOST PORT COUNT TYPE``: ``COUNT`` channels
(one TCP connection each: a local subchannel pool, so grpcio does not share them), one 2017
``Events`` call per channel, then one JSON line on stdout once every call has its response
headers. Each line on stdin then asks for the messages received so far (one JSON line back);
end of input closes the calls.
"""

from __future__ import annotations

import asyncio
import json
import sys

from plasma_bench.wire import pb_request

__all__ = ["main"]

EVENTS = "/proto.StreamService/Events"
CONNECTS_IN_FLIGHT = 50


async def _stream(
    target: str,
    request: bytes,
    counts: list[int],
    i: int,
    ready: asyncio.Queue[str],
    slots: asyncio.Semaphore,
) -> None:
    """One channel and its call; ``counts[i]`` goes from -1 (not ready) to messages received."""
    import grpc

    await slots.acquire()
    channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        call = channel.unary_stream(EVENTS)(request)  # raw bytes: no generated stubs needed
        try:
            await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            slots.release()
            await ready.put(f"{exc.code().name} {exc.details()}"[:80])
            return
        counts[i] = 0
        slots.release()
        await ready.put("")
        async for _message in call:
            counts[i] += 1
    except grpc.aio.AioRpcError as exc:
        print(json.dumps({"error": f"{exc.code().name} {exc.details()}"[:80]}), flush=True)
    finally:
        await channel.close(None)


async def _main(host: str, port: int, count: int, event_type: str) -> None:
    target = f"{host}:{port}"
    request = pb_request([event_type])
    counts = [-1] * count
    ready: asyncio.Queue[str] = asyncio.Queue()
    slots = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    tasks = [
        asyncio.create_task(_stream(target, request, counts, i, ready, slots)) for i in range(count)
    ]
    errors: dict[str, int] = {}
    ok = 0
    for _ in range(count):
        err = await ready.get()
        if err:
            errors[err] = errors.get(err, 0) + 1
        else:
            ok += 1
    print(json.dumps({"ready": ok, "errors": errors}), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        live = [c for c in counts if c >= 0]
        print(json.dumps({"received": sum(live), "min": min(live, default=0)}), flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    host, port, count, event_type = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    asyncio.run(_main(host, port, count, event_type))


if __name__ == "__main__":
    main()
