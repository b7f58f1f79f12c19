"""The client commands of ``plasma``: ``sub``, ``pub`` and ``proto``, built on ``plasma.client``.

Each takes its defaults from the same ``PLASMA_*`` variables as the server (so a shell that
runs a server can talk to it with no flags), exits ``0`` on success, ``1`` with a one-line
reason on failure, ``2`` for bad arguments, and shows an example in ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import quote

import orjson

from plasma.client import (
    ClientError,
    Event,
    Gap,
    Publisher,
    Subscriber,
    encode_event,
)
from plasma.config import read_setting
from plasma.errors import ConfigError

__all__ = ["SERVE_HELP", "proto_main", "pub_main", "sub_main"]

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

# Events per request when publishing NDJSON from stdin; the server's default body limit is 1 MiB.
_BATCH_EVENTS = 1000
_BATCH_BYTES = 512 << 10


class _Parser(argparse.ArgumentParser):
    """argparse, with errors as one line naming the command."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return EXIT_FAILURE


def default_url(environ: Mapping[str, str]) -> str:
    """The server this shell's ``PLASMA_*`` settings describe (``http://127.0.0.1:8080``)."""
    host = read_setting(environ, "PLASMA_HOST").strip() or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = read_setting(environ, "PLASMA_PORT")
    scheme = "https" if read_setting(environ, "PLASMA_TLS_CERT_FILE") else "http"
    return f"{scheme}://{host}:{port}"


def _token(value: str | None, prog: str) -> str | None:
    """``--token T``, or ``--token @FILE`` to keep the token out of the process list."""
    if value is None or not value.startswith("@"):
        return value
    try:
        with open(value[1:], encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise ClientError(f"cannot read the token file {value[1:]}: {exc.strerror}") from None


SERVE_HELP = """\
usage: plasma serve

Start the server (what plain "plasma" does). It is configured by environment variables only
(see "plasma --help" for every one).

example:
  PLASMA_SUBSCRIBER_TYPE=redis PLASMA_SUBSCRIBER_REDIS_CHANNELS=events plasma serve
  PLASMA_PUBLISH_API=true plasma serve      # also accept POST /publish
"""

# --- plasma sub -----------------------------------------------------------------------------

SUB_EXAMPLE = """\
example:
  plasma sub program:1234 --url http://localhost:8080
  plasma sub program --json | jq .data          # one JSON object per line
  plasma sub program --grpc --last-event-id 1700000000000-0

Prints each event as "<id> <type> <data as JSON>". It reconnects by itself and resumes after
the last event it printed; when the server cannot replay what was missed, it says so on
stderr (and with --json prints an event of type "plasma:gap").
"""


def sub_main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    parser = _Parser(
        prog="plasma sub",
        description="Subscribe to event types on a plasma server and print each event.",
        epilog=SUB_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("types", nargs="+", metavar="TYPE", help="event types (colon prefixes)")
    parser.add_argument("--url", help="plasma's URL (from PLASMA_HOST and PLASMA_PORT)")
    parser.add_argument("--grpc", action="store_true", help="subscribe over gRPC, not SSE")
    parser.add_argument("--last-event-id", metavar="ID", help="resume after this event id")
    parser.add_argument("--token", metavar="T", help="bearer token, or @FILE to read it")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--count", type=int, metavar="N", help="exit after N events")
    parser.add_argument("--ca-file", metavar="PEM", help="CA bundle to verify the server's TLS")
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        return asyncio.run(_sub(args, environ, sys.stdout))
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `plasma sub ... | head`
        sys.stderr.close()
        return 0
    except ClientError as exc:
        return _fail(prog, str(exc))


async def _sub(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO) -> int:
    as_json: bool = args.json

    def on_gap(gap: Gap) -> None:
        print(
            f"plasma sub: gap: events after {gap.last_event_id or '(none)'} were lost; "
            f"resuming from {gap.resume_from or '(now)'}",
            file=sys.stderr,
            flush=True,
        )
        if as_json:
            data = {"lastEventId": gap.last_event_id, "resumeFrom": gap.resume_from}
            line = {"id": gap.resume_from, "type": "plasma:gap", "data": data}
            out.write(orjson.dumps(line).decode() + "\n")
            out.flush()

    subscriber = Subscriber(
        args.url or default_url(environ),
        args.types,
        transport="grpc" if args.grpc else "sse",
        token=_token(args.token, "plasma sub"),
        last_event_id=args.last_event_id,
        on_gap=on_gap,
        event_query=read_setting(environ, "PLASMA_SSE_EVENTQUERY"),
        ca_file=args.ca_file,
    )
    count = 0
    async with subscriber:
        async for item in subscriber:
            assert isinstance(item, Event)  # gaps go to on_gap
            if as_json:
                line = orjson.dumps({"id": item.id, "type": item.type, "data": item.data})
                out.write(line.decode() + "\n")
            else:
                out.write(f"{item.id} {item.type} {orjson.dumps(item.data).decode()}\n")
            out.flush()
            count += 1
            if args.count is not None and count >= args.count:
                break
    return 0


# --- plasma pub -----------------------------------------------------------------------------

PUB_EXAMPLE = """\
example:
  plasma pub program:1234:views '{"views": 42}'
  plasma pub greeting '"hello"' --url http://localhost:8080
  plasma pub program:1 '1' --redis localhost:6379 --channel events
  printf '%s\\n' '{"meta":{"type":"a"},"data":1}' '{"meta":{"type":"b"},"data":2}' | plasma pub -

DATA is JSON (a string needs its quotes). Through plasma it uses the publish API
(PLASMA_PUBLISH_API=true on the server); with --redis it publishes straight to Redis
(XADD when --stream or PLASMA_SUBSCRIBER_TYPE=redis-stream, else PUBLISH). Prints one line
per event: its id, or "-" where each plasma assigns the id on receipt (pub/sub).
"""


def pub_main(argv: Sequence[str], environ: Mapping[str, str], stdin: TextIO | None = None) -> int:
    parser = _Parser(
        prog="plasma pub",
        description="Publish events to plasma (its publish API) or straight to Redis.",
        epilog=PUB_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("type", metavar="TYPE", help='the event type, or "-" for NDJSON on stdin')
    parser.add_argument("data", nargs="?", metavar="DATA", help="the event data as JSON (null)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="plasma's URL (from PLASMA_HOST and PLASMA_PORT)")
    target.add_argument(
        "--redis",
        nargs="?",
        const="",
        metavar="ADDR",
        help="publish to Redis at host:port (default PLASMA_SUBSCRIBER_REDIS_ADDR)",
    )
    parser.add_argument(
        "--channel",
        metavar="C",
        help="channel or stream (the first of "
        "PLASMA_SUBSCRIBER_REDIS_CHANNELS); through plasma: ?channel=",
    )
    parser.add_argument("--stream", action="store_true", help="with --redis: XADD, not PUBLISH")
    parser.add_argument("--token", metavar="T", help="bearer token, or @FILE to read it")
    parser.add_argument("--ca-file", metavar="PEM", help="CA bundle to verify the server's TLS")
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        if args.type == "-":
            if args.data is not None:
                parser.error('"-" reads events from stdin and takes no DATA')
            events = _read_ndjson(stdin or sys.stdin)
        else:
            events = [(args.type, _data(args.data))]
        publisher = _publisher(args, environ)
        ids = asyncio.run(_pub(publisher, events))
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ClientError, ValueError) as exc:
        return _fail(prog, str(exc))
    sys.stdout.write("".join(f"{i if i is not None else '-'}\n" for i in ids))
    sys.stdout.flush()
    return 0


def _data(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError(
            f"DATA {text[:40]!r} is not JSON (a string needs quotes: '\"hello\"')"
        ) from None


def _read_ndjson(stream: TextIO) -> list[Any]:
    """Every event on ``stream``, one JSON object a line, all checked before any is sent."""
    events = []
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"stdin line {number}: not JSON: {exc}") from None
        if not isinstance(event, dict):
            raise ValueError(f"stdin line {number}: an event is a JSON object")
        try:
            encode_event(event)
        except ValueError as exc:
            raise ValueError(f"stdin line {number}: {exc}") from None
        events.append(event)
    if not events:
        raise ValueError("no events on stdin (one JSON object a line)")
    return events


def _publisher(args: argparse.Namespace, environ: Mapping[str, str]) -> Publisher:
    token = _token(args.token, "plasma pub")
    if args.redis is None:
        return Publisher(
            args.url or default_url(environ),
            token=token,
            channel=args.channel,
            ca_file=args.ca_file,
        )
    channels = read_setting(environ, "PLASMA_SUBSCRIBER_REDIS_CHANNELS")
    channel = args.channel or (channels[0] if channels else None)
    if not channel:
        raise ValueError("--redis needs --channel (or PLASMA_SUBSCRIBER_REDIS_CHANNELS)")
    scheme = "redis"
    password = read_setting(environ, "PLASMA_SUBSCRIBER_REDIS_PASSWORD")
    db = read_setting(environ, "PLASMA_SUBSCRIBER_REDIS_DB")
    if args.redis:
        host, _, port = args.redis.rpartition(":")
        address = f"{host or 'localhost'}:{port}"
    else:
        configured = read_setting(environ, "PLASMA_SUBSCRIBER_REDIS_ADDR")
        host, port = configured.addrs[0]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        scheme = "rediss" if configured.tls else "redis"
        password = configured.password or password
        db = configured.db if configured.db is not None else db
    auth = f":{quote(password, safe='')}@" if password else ""
    stream = args.stream or read_setting(environ, "PLASMA_SUBSCRIBER_TYPE") == "redis-stream"
    return Publisher(f"{scheme}://{auth}{address}/{db}", channel=channel, stream=stream)


async def _pub(publisher: Publisher, events: list[Any]) -> list[str | None]:
    ids: list[str | None] = []
    async with publisher:
        for batch in _batches(events):
            try:
                ids.extend(await publisher.publish_many(batch))
            except ClientError as exc:
                if ids:
                    raise ClientError(
                        f"{exc} (the first {len(ids)} events were published)"
                    ) from None
                raise
    return ids


def _batches(events: list[Any]) -> list[list[Any]]:
    batches: list[list[Any]] = [[]]
    size = 0
    for event in events:
        length = len(encode_event(event))
        if batches[-1] and (len(batches[-1]) >= _BATCH_EVENTS or size + length > _BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(event)
        size += length
    return batches


# --- plasma proto ---------------------------------------------------------------------------

PROTO_EXAMPLE = """\
example:
  plasma proto > stream.proto
  python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. stream.proto

--v2 prints the bidirectional form (re-subscription on an open stream); both call the same
method, and both declare package "proto": generate stubs from one of them.
"""


def proto_main(argv: Sequence[str]) -> int:
    parser = _Parser(
        prog="plasma proto",
        description="Print the .proto file of plasma's gRPC interface.",
        epilog=PROTO_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--v2", action="store_true", help="print stream_v2.proto")
    args = parser.parse_args(argv)
    name = "stream_v2.proto" if args.v2 else "stream.proto"
    try:
        text = proto_text(name)
    except OSError as exc:
        return _fail(parser.prog, f"cannot read {name} from the installed package: {exc}")
    sys.stdout.write(text)
    return 0


def proto_text(name: str) -> str:
    """The text of ``name`` as installed with plasma."""
    return importlib.resources.files("plasma.transports.grpc").joinpath(name).read_text("utf-8")
