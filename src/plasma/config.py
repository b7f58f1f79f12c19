"""Settings: every ``PLASMA_*`` environment variable, parsed once into frozen dataclasses.

This module is the only reader of the environment. ``SETTINGS`` is the one table of every
variable: its name, default, parser and help. ``plasma --help``, the README's settings table
and the dataclasses' defaults all come from it. ``Config.from_env(os.environ)`` either
returns a complete, typed ``Config`` or raises ``ConfigError`` naming the variable, the
value and what was expected. Names, types and defaults follow the 2017 original's README;
durations and booleans are parsed the way Go parses them, so existing deployments keep
their configuration unchanged.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import unquote

from plasma.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "SETTINGS",
    "AuthConfig",
    "Config",
    "LimitsConfig",
    "LogConfig",
    "MetricsConfig",
    "NatsConfig",
    "PublishConfig",
    "RedisAddress",
    "RedisConfig",
    "SSEConfig",
    "Setting",
    "SourceConfig",
    "TLSConfig",
    "parse_bool",
    "parse_duration",
    "read_setting",
    "setting_default",
    "settings_help",
    "settings_markdown",
]

LogLevel = Literal["debug", "info", "warn", "error", "fatal", "panic"]
_LEVELS = ("panic", "fatal", "error", "warn", "info", "debug")

# --- value parsers -------------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign, as Go accepts
    "μs": 1e-6,  # U+03BC greek mu, as Go accepts
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration (``1m30s``, ``500ms``, ``1.5h``, ``0``) into seconds."""
    s = text.strip()
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("empty duration")
    total = 0.0
    pos = 0
    while pos < len(s):
        match = _DURATION_PART.match(s, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_bool(text: str) -> bool:
    """Parse a boolean exactly as Go's ``strconv.ParseBool`` does."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r}")


def _parse_int(text: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", text.strip()):
        raise ValueError(f"invalid integer {text!r}")
    return int(text)


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_addr(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError("missing port")
    port = _parse_int(port_text)
    if not 0 < port <= 65535:
        raise ValueError("bad port")
    return host.strip("[]") or "localhost", port


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """``PLASMA_SUBSCRIBER_REDIS_ADDR`` parsed: the addresses, and what a URL form carried."""

    addrs: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    db: int | None = None


def _parse_redis_addr(text: str) -> RedisAddress:
    """``host:port``, a comma list (cluster seeds), or ``redis[s]://[user:pass@]host:port[/db]``."""
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        return RedisAddress(tuple(_parse_addr(part) for part in _parse_list(text)) or _no_addr())
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"unknown scheme {scheme!r}")
    credentials, at, location = rest.rpartition("@")
    hosts, _, db_text = location.partition("/")
    username, colon, password = credentials.partition(":")
    if at and not colon:  # redis://password@host, as redis-cli reads it
        username, password = "", credentials
    return RedisAddress(
        tuple(_parse_addr(part) for part in _parse_list(hosts)) or _no_addr(),
        tls=scheme == "rediss",
        username=unquote(username),
        password=unquote(password),
        db=_parse_int(db_text) if db_text else None,
    )


def _no_addr() -> tuple[tuple[str, int], ...]:
    raise ValueError("no address")


def _parse_addrs(text: str) -> tuple[tuple[str, int], ...]:
    return tuple(_parse_addr(part) for part in _parse_list(text))


def _parse_port(text: str) -> int:
    port = _parse_int(text.strip())
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return port


def _parse_optional_port(text: str) -> int | None:
    return _parse_port(text) if text.strip() else None


def _parse_level(text: str) -> LogLevel:
    value = text.strip().lower()
    if value == "warning":
        value = "warn"
    if value not in _LEVELS:
        raise ValueError(f"unknown level {text!r}")
    return value  # type: ignore[return-value]


_RESERVED_PATHS = ("/hc", "/metrics", "/debug")


def _parse_path(text: str) -> str:
    path = text.strip()
    if not re.fullmatch(r"/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*", path) or path in _RESERVED_PATHS:
        raise ValueError(f"invalid path {text!r}")
    return path


def _parse_name(text: str) -> str:
    if not text.strip():
        raise ValueError("empty name")
    return text.strip()


_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _parse_cookie_name(text: str) -> str:
    if not _COOKIE_NAME.fullmatch(text.strip()):
        raise ValueError(f"invalid cookie name {text!r}")
    return text.strip()


# --- the settings table ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: name, default text, how to parse it, and one line of help.

    ``help`` is Markdown (the README's table shows it as is; ``--help`` drops the backticks).
    ``parse`` raises ``ValueError`` for a value it cannot use; ``expected`` then says, in the
    ``ConfigError``, what would have been accepted.
    """

    name: str
    default: str
    kind: str
    help: str
    parse: Callable[[str], Any] = field(repr=False, compare=False)
    expected: str = ""
    secret: bool = False

    def read(self, text: str) -> Any:
        """The typed value of ``text`` (the default when empty); raise ``ConfigError``."""
        text = text or self.default
        try:
            return self.parse(text)
        except (ValueError, OverflowError):
            raise ConfigError(self.name, text, self.expected) from None


def _string(name: str, default: str, help: str, *, kind: str = "string", **kw: Any) -> Setting:
    return Setting(name, default, kind, help, str, **kw)


def _integer(
    name: str, default: str, help: str, low: int | None = None, high: int | None = None
) -> Setting:
    def parse(text: str) -> int:
        value = _parse_int(text)
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{value} out of range")
        return value

    expected = "an integer"
    if high is not None:
        expected += f" between {low} and {high}"
    elif low is not None:
        expected += f" of at least {low}"
    return Setting(name, default, "int", help, parse, expected)


def _duration(name: str, default: str, help: str, *, zero: bool = False) -> Setting:
    def parse(text: str) -> float:
        value = parse_duration(text)
        if value < 0 or (value == 0 and not zero):
            raise ValueError(f"duration {text!r} out of range")
        return value

    which = "a Go duration of 0 or more" if zero else "a positive Go duration"
    return Setting(name, default, "duration", help, parse, f"{which}, such as 500ms, 1s or 1m30s")


def _choice(name: str, default: str, help: str, choices: tuple[str, ...]) -> Setting:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"unknown choice {text!r}")
        return value

    expected = "one of " + ", ".join(c or '""' for c in choices)
    return Setting(name, default, "choice", help, parse, expected)


def _level(name: str, help: str) -> Setting:
    return Setting(name, "info", "level", help, _parse_level, "one of " + ", ".join(_LEVELS))


def _port(name: str, default: str, help: str) -> Setting:
    parse = _parse_port if default else _parse_optional_port
    return Setting(name, default, "port", help, parse, "a TCP port number between 0 and 65535")


_LEVEL_HELP = "`panic`, `fatal`, `error`, `warn`, `info`, `debug`"

SETTINGS: tuple[Setting, ...] = (
    _port("PLASMA_PORT", "8080", "port for SSE, gRPC and the endpoints"),
    _string("PLASMA_HOST", "", "interface to listen on; empty: all interfaces"),
    _port("PLASMA_GRPC_PORT", "", "an extra port serving gRPC only; empty: none"),
    Setting(
        "PLASMA_DEBUG", "false", "bool", "serve `/debug` (a page to publish test events)",
        parse_bool, "a boolean (true/false, 1/0, t/f)",
    ),
    _string("PLASMA_ORIGIN", "", "`Access-Control-Allow-Origin` value; empty: omitted"),
    Setting(
        "PLASMA_PUBLISH_API", "false", "bool",
        "serve the publish API (`POST` events to `PLASMA_PUBLISH_PATH`)",
        parse_bool, "a boolean (true/false, 1/0, t/f)",
    ),
    Setting(
        "PLASMA_PUBLISH_PATH", "/publish", "path", "path of the publish API", _parse_path,
        "a URL path starting with /, other than /hc, /metrics and /debug",
    ),
    _integer(
        "PLASMA_PUBLISH_MAX_BODY", "1048576",
        "largest publish request body, in bytes; larger: `413`", 64,
    ),
    _integer("PLASMA_SSE_RETRY", "2000", "milliseconds SSE clients wait before reconnecting", 0),
    Setting(
        "PLASMA_SSE_EVENTQUERY", "eventType", "string", "query parameter listing the types",
        _parse_name, "a query parameter name",
    ),
    _duration("PLASMA_SSE_HEARTBEAT", "10s", "interval of the `:heartbeat` comment"),
    _choice(
        "PLASMA_SUBSCRIBER_TYPE", "mock",
        "`mock`, `redis`, `redis-stream`, `nats` or `nats-jetstream`",
        ("mock", "redis", "redis-stream", "nats", "nats-jetstream"),
    ),
    _duration("PLASMA_SUBSCRIBER_MOCK_INTERVAL", "1s", "mock source: interval between events"),
    Setting(
        "PLASMA_SUBSCRIBER_REDIS_ADDR", "localhost:6379", "address",
        "Redis `host:port`; with `..._CLUSTER`, a comma list of seed nodes; or a URL "
        "`redis://` / `rediss://` (TLS) `[user:password@]host:port[/db]`",
        _parse_redis_addr,
        "host:port (comma list for a cluster) or redis[s]://[user:password@]host:port[/db]",
    ),
    _string("PLASMA_SUBSCRIBER_REDIS_USERNAME", "", "Redis ACL user; empty: the default user"),
    _string("PLASMA_SUBSCRIBER_REDIS_PASSWORD", "", "Redis password", secret=True),
    _integer("PLASMA_SUBSCRIBER_REDIS_DB", "0", "Redis database", 0),
    Setting(
        "PLASMA_SUBSCRIBER_REDIS_TLS", "false", "bool",
        "connect to Redis over TLS (a `rediss://` address turns it on too)",
        parse_bool, "a boolean (true/false, 1/0, t/f)",
    ),
    _string(
        "PLASMA_SUBSCRIBER_REDIS_TLS_CA_FILE", "",
        "PEM file of the CA that signed Redis's certificate; empty: the system's", kind="path",
    ),
    Setting(
        "PLASMA_SUBSCRIBER_REDIS_CLUSTER", "false", "bool",
        "Redis Cluster: `..._ADDR` lists seed nodes; plasma learns the slots and follows "
        "`MOVED` and failovers",
        parse_bool, "a boolean (true/false, 1/0, t/f)",
    ),
    Setting(
        "PLASMA_SUBSCRIBER_REDIS_SHARDED", "true", "bool",
        "in cluster mode, sharded pub/sub (`SSUBSCRIBE`; publishers `SPUBLISH`); `false`: "
        "classic `SUBSCRIBE`",
        parse_bool, "a boolean (true/false, 1/0, t/f)",
    ),
    Setting(
        "PLASMA_SUBSCRIBER_REDIS_SENTINELS", "", "list",
        "Sentinel `host:port` list; set: the master comes from the sentinels, `..._ADDR` "
        "is unused",
        _parse_addrs, "a comma list of host:port",
    ),
    _string(
        "PLASMA_SUBSCRIBER_REDIS_SENTINEL_MASTER", "mymaster",
        "the master's name in the sentinels' configuration",
    ),
    _string(
        "PLASMA_SUBSCRIBER_REDIS_SENTINEL_PASSWORD", "", "password of the sentinels themselves",
        secret=True,
    ),
    Setting(
        "PLASMA_SUBSCRIBER_REDIS_CHANNELS", "", "list",
        "channels (or streams), comma-separated; required for Redis", _parse_list,
    ),
    _choice(
        "PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR", "alive",
        "`die` (exit 3) or `alive` (keep retrying)", ("alive", "die"),
    ),
    _duration("PLASMA_SUBSCRIBER_REDIS_TIMEOUT", "1s", "connect and command timeout"),
    _duration("PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL", "5s", "wait between reconnects"),
    _integer(
        "PLASMA_SUBSCRIBER_REDIS_MAX_RETRY", "5",
        "failed reconnects in a row before `die`/`alive` applies", 1,
    ),
    Setting(
        "PLASMA_SUBSCRIBER_NATS_URL", "nats://localhost:4222", "list",
        "NATS server URLs, comma-separated (a cluster); `tls://` for TLS; "
        "`nats://user:password@host:port` works",
        _parse_list, "a comma list of NATS URLs",
    ),
    Setting(
        "PLASMA_SUBSCRIBER_NATS_SUBJECTS", "", "list",
        "NATS subjects, comma-separated, wildcards (`*`, `>`) allowed; required for NATS",
        _parse_list,
    ),
    _string(
        "PLASMA_SUBSCRIBER_NATS_STREAM", "PLASMA",
        "JetStream stream (`nats-jetstream`); created over the subjects when missing",
    ),
    _string("PLASMA_SUBSCRIBER_NATS_USER", "", "NATS user"),
    _string("PLASMA_SUBSCRIBER_NATS_PASSWORD", "", "NATS password", secret=True),
    _string("PLASMA_SUBSCRIBER_NATS_TOKEN", "", "NATS token", secret=True),
    _string(
        "PLASMA_SUBSCRIBER_NATS_CREDS_FILE", "", "NATS credentials file (JWT + NKey)",
        kind="path",
    ),
    Setting(
        "PLASMA_SUBSCRIBER_NATS_TLS", "false", "bool", "connect to NATS over TLS",
        parse_bool, "a boolean (true/false, 1/0, t/f)",
    ),
    _string(
        "PLASMA_SUBSCRIBER_NATS_TLS_CA_FILE", "",
        "PEM file of the CA that signed the NATS certificate; empty: the system's", kind="path",
    ),
    _integer(
        "PLASMA_HISTORY_SIZE", "10000", "events kept for resume; `0` disables history",
        0, 10_000_000,
    ),
    _duration(
        "PLASMA_HISTORY_TTL", "5m", "oldest event kept for resume; `0` means no age limit",
        zero=True,
    ),
    _integer(
        "PLASMA_HISTORY_MAX_BYTES", "67108864",
        "bytes of events kept for resume (bodies plus ~400 bytes each); the oldest go first, "
        "the newest is always kept",
        1,
    ),
    _integer(
        "PLASMA_CLIENT_BUFFER", "1048576", "bytes a client may leave unread before it is cut",
        1024,
    ),
    _integer(
        "PLASMA_MAX_BUFFERED_BYTES", "536870912",
        "bytes queued for all clients together; beyond, the clients with the largest backlog "
        "are cut first",
        1024,
    ),
    _integer(
        "PLASMA_WORKERS", "1", "worker processes sharing the port; `0` = one per core", 0, 256
    ),
    _integer(
        "PLASMA_LISTEN_BACKLOG", "4096",
        "connections the kernel queues for accept, per worker (capped by "
        "`net.core.somaxconn`; a warning at start-up says when it is lower)",
        1, 1 << 20,
    ),
    _integer(
        "PLASMA_MAX_CONNECTIONS", "50000",
        "open SSE + gRPC streams per process; beyond: `503` with `Retry-After` / "
        "`RESOURCE_EXHAUSTED`",
        1,
    ),
    _integer(
        "PLASMA_MAX_TYPES", "128",
        "event types one subscription may list (`400` / `INVALID_ARGUMENT`)", 1,
    ),
    _integer("PLASMA_MAX_TYPE_LENGTH", "256", "longest event type a client may ask for", 1),
    _integer(
        "PLASMA_MAX_EVENT_SIZE", "1048576",
        "largest message from the source, in bytes; larger ones are skipped and counted", 64,
    ),
    _integer(
        "PLASMA_MAX_REQUEST_LINE", "8190", "longest HTTP request line (a longer one gets `400`)",
        256,
    ),
    _integer("PLASMA_MAX_HEADER_SIZE", "8190", "longest HTTP header line", 256),
    _integer("PLASMA_MAX_HEADERS", "64", "most HTTP request header lines", 8),
    _duration(
        "PLASMA_HEADER_TIMEOUT", "10s",
        "time to send a whole request, or the HTTP/2 preface (slow-loris bound); also the idle "
        "keep-alive time",
    ),
    _integer(
        "PLASMA_GRPC_MAX_STREAMS", "100", "concurrent gRPC streams per HTTP/2 connection", 1
    ),
    _integer(
        "PLASMA_GRPC_MAX_FRAME_SIZE", "16384",
        "largest HTTP/2 frame plasma accepts (16384 to 16777215)", 16384, 16777215,
    ),
    _string("PLASMA_ERROR_LOG_OUT", "stdout", "`stdout`, `stderr` or a file path", kind="output"),
    _level("PLASMA_ERROR_LOG_LEVEL", _LEVEL_HELP),
    _string("PLASMA_ACCESS_LOG_OUT", "stdout", "`stdout`, `stderr` or a file path", kind="output"),
    _level("PLASMA_ACCESS_LOG_LEVEL", "as above; `warn` or higher silences the access log"),
    _string(
        "PLASMA_TLS_CERT_FILE", "", "PEM certificate; TLS is on when both files are set",
        kind="path",
    ),
    _string("PLASMA_TLS_KEY_FILE", "", "PEM private key", kind="path"),
    _choice(
        "PLASMA_METRICS_TYPE", "", "`log` or `syslog`: periodic metrics sender; empty: off",
        ("", "log", "syslog"),
    ),
    _duration("PLASMA_METRICS_INTERVAL", "10s", "sampling interval"),
    _string("PLASMA_METRICS_LOG_OUT", "stdout", "metrics log target", kind="output"),
    _string("PLASMA_METRICS_LOG_PREFIX", "metrics", "prefix of each metrics line"),
    _integer("PLASMA_METRICS_LOG_FLAG", "4", "Go `log` flags (`4` = `log.Lmicroseconds`)", 0, 127),
    _duration("PLASMA_METRICS_LOG_INTERVAL", "1m", "interval of metrics log lines"),
    _string("PLASMA_METRICS_SYSLOG_TAG", "plasma", "syslog tag"),
    _duration("PLASMA_METRICS_SYSLOG_INTERVAL", "1m", "interval of syslog messages"),
    _integer(
        "PLASMA_METRICS_SYSLOG_SEVERITY", "0", "syslog severity (Go's `log/syslog` numbering)",
        0, 7,
    ),
    _integer("PLASMA_METRICS_SYSLOG_FACILITY", "0", "syslog facility (Go's numbering)", 0, 23),
    _choice(
        "PLASMA_METRICS_SYSLOG_NETWORK", "",
        "`udp`, `tcp`, `unix`, `unixgram`; empty: the local syslog; `..._NETWORDK` (the "
        "original's spelling) works too",
        ("", "udp", "tcp", "unix", "unixgram"),
    ),
    _string(
        "PLASMA_METRICS_SYSLOG_ADDR", "", "syslog `host:port` or socket path; empty: local"
    ),
    _string(
        "PLASMA_AUTH_JWT_SECRET", "",
        "HMAC secret (32 bytes or more) verifying JWTs; setting a key turns access control on",
        secret=True,
    ),
    _string(
        "PLASMA_AUTH_JWT_PUBLIC_KEY_FILE", "",
        "PEM public key (RSA, EC, Ed25519) verifying JWTs, instead of a secret", kind="path",
    ),
    _string(
        "PLASMA_AUTH_JWT_JWKS_FILE", "",
        "JWKS file of public keys chosen by `kid`, re-read when it changes; instead of the above",
        kind="path",
    ),
    Setting(
        "PLASMA_AUTH_JWT_ALGORITHMS", "", "list",
        "JWT algorithms accepted, comma-separated; empty: every one the key can verify",
        _parse_list,
    ),
    _string("PLASMA_AUTH_JWT_AUDIENCE", "", "when set, a token's `aud` must contain it"),
    _string("PLASMA_AUTH_JWT_ISSUER", "", "when set, a token's `iss` must equal it"),
    _duration(
        "PLASMA_AUTH_JWT_LEEWAY", "5s", "clock skew allowed on a token's `exp` and `nbf`",
        zero=True,
    ),
    Setting(
        "PLASMA_AUTH_PUBLIC_TYPES", "", "list",
        "type prefixes anyone may subscribe to without a token, comma-separated", _parse_list,
    ),
    Setting(
        "PLASMA_AUTH_COOKIE", "plasmaAuthorization", "string",
        "cookie an SSE request may carry its token in", _parse_cookie_name,
        "a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
    ),
    _string(
        "PLASMA_METRICS_TOKEN", "",
        "bearer token `/metrics` requires (16 bytes or more); empty: open", secret=True,
    ),
    _string(
        "PLASMA_DEBUG_TOKEN", "",
        "bearer token the `/debug` page requires (16 bytes or more); empty: open", secret=True,
    ),
)  # fmt: skip

_BY_NAME = {s.name: s for s in SETTINGS}
_ALIASES = {"PLASMA_METRICS_SYSLOG_NETWORDK": "PLASMA_METRICS_SYSLOG_NETWORK"}


def setting_default(name: str) -> Any:
    """The typed default of setting ``name``, e.g. ``setting_default("PLASMA_PORT") == 8080``."""
    setting = _BY_NAME[name]
    return setting.parse(setting.default)


def read_setting(environ: Mapping[str, str], name: str) -> Any:
    """One setting's typed value from ``environ``; raise ``ConfigError`` naming it.

    For the client commands (``plasma sub``/``pub``), which need a few settings, not a
    complete server configuration."""
    return _BY_NAME[name].read(environ.get(name, ""))


def settings_help() -> str:
    """The settings table for ``plasma --help``: name, kind and default, then the help."""
    width = max(len(s.name) for s in SETTINGS)
    lines = ["settings (environment variables; empty means the default):"]
    for s in SETTINGS:
        default = s.default or '""'
        lines.append(f"  {s.name:<{width}}  {s.kind:<9} default {default}")
        indent = " " * 6
        help = s.help.replace("`", "")
        lines += textwrap.wrap(help, 96, initial_indent=indent, subsequent_indent=indent)
    return "\n".join(lines)


def settings_markdown() -> str:
    """The README's settings table (a test keeps the README's copy equal to this)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        lines.append(f"| `{s.name}` | {default} | {s.help} |")
    return "\n".join(lines)


_Section = TypeVar("_Section", bound="DataclassInstance")


class _Reader:
    """Reads settings from a mapping through the table; every bad value is one ``ConfigError``."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._env = dict(environ)
        self.aliased: dict[str, str] = {}
        """Settings read through an alias: name -> the alias the environment used."""
        for alias, name in _ALIASES.items():
            if alias in self._env and name not in self._env:
                self._env[name] = self._env[alias]
                self.aliased[name] = alias

    def __getitem__(self, name: str) -> Any:
        return _BY_NAME[name].read(self.raw(name))

    def raw(self, name: str) -> str:
        return self._env.get(name) or _BY_NAME[name].default

    def section(self, cls: type[_Section], prefix: str) -> _Section:
        """A section whose every field is read from ``prefix`` + its name in capitals."""
        return cls(**{f.name: self[prefix + f.name.upper()] for f in fields(cls)})


# --- the typed configuration: every default comes from SETTINGS -----------------------------

_d = setting_default
_DEFAULT_LEVEL: LogLevel = _d("PLASMA_ERROR_LOG_LEVEL")


@dataclass(frozen=True, slots=True, kw_only=True)
class SSEConfig:
    """How SSE streams are framed: ``SSEConfig(retry_ms=2000, event_query="eventType")``."""

    retry_ms: int = _d("PLASMA_SSE_RETRY")
    event_query: str = _d("PLASMA_SSE_EVENTQUERY")
    heartbeat: float = _d("PLASMA_SSE_HEARTBEAT")


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    """The Redis source (pub/sub or streams). ``password`` never appears in ``repr``."""

    host: str = _d("PLASMA_SUBSCRIBER_REDIS_ADDR").addrs[0][0]
    port: int = _d("PLASMA_SUBSCRIBER_REDIS_ADDR").addrs[0][1]
    seeds: tuple[tuple[str, int], ...] = ()
    """Every address of ``..._ADDR`` (cluster seed nodes); empty: ``host:port`` alone."""
    username: str = _d("PLASMA_SUBSCRIBER_REDIS_USERNAME")
    password: str = field(default=_d("PLASMA_SUBSCRIBER_REDIS_PASSWORD"), repr=False)
    db: int = _d("PLASMA_SUBSCRIBER_REDIS_DB")
    tls: bool = _d("PLASMA_SUBSCRIBER_REDIS_TLS")
    tls_ca_file: str = _d("PLASMA_SUBSCRIBER_REDIS_TLS_CA_FILE")
    cluster: bool = _d("PLASMA_SUBSCRIBER_REDIS_CLUSTER")
    sharded: bool = _d("PLASMA_SUBSCRIBER_REDIS_SHARDED")
    sentinels: tuple[tuple[str, int], ...] = _d("PLASMA_SUBSCRIBER_REDIS_SENTINELS")
    sentinel_master: str = _d("PLASMA_SUBSCRIBER_REDIS_SENTINEL_MASTER")
    sentinel_password: str = field(
        default=_d("PLASMA_SUBSCRIBER_REDIS_SENTINEL_PASSWORD"), repr=False
    )
    channels: tuple[str, ...] = _d("PLASMA_SUBSCRIBER_REDIS_CHANNELS")
    over_max_retry: Literal["die", "alive"] = _d("PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR")
    timeout: float = _d("PLASMA_SUBSCRIBER_REDIS_TIMEOUT")
    retry_interval: float = _d("PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL")
    max_retry: int = _d("PLASMA_SUBSCRIBER_REDIS_MAX_RETRY")

    @property
    def addrs(self) -> tuple[tuple[str, int], ...]:
        """Where to connect: the seed list, or ``host:port``."""
        return self.seeds or ((self.host, self.port),)


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsConfig:
    """The NATS sources (core and JetStream). Secrets never appear in ``repr``.

    The retry settings are the Redis ones (``PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL`` and its
    siblings): one reconnect policy for every broker.
    """

    servers: tuple[str, ...] = _d("PLASMA_SUBSCRIBER_NATS_URL")
    subjects: tuple[str, ...] = _d("PLASMA_SUBSCRIBER_NATS_SUBJECTS")
    stream: str = _d("PLASMA_SUBSCRIBER_NATS_STREAM")
    user: str = _d("PLASMA_SUBSCRIBER_NATS_USER")
    password: str = field(default=_d("PLASMA_SUBSCRIBER_NATS_PASSWORD"), repr=False)
    token: str = field(default=_d("PLASMA_SUBSCRIBER_NATS_TOKEN"), repr=False)
    creds_file: str = _d("PLASMA_SUBSCRIBER_NATS_CREDS_FILE")
    tls: bool = _d("PLASMA_SUBSCRIBER_NATS_TLS")
    tls_ca_file: str = _d("PLASMA_SUBSCRIBER_NATS_TLS_CA_FILE")
    over_max_retry: Literal["die", "alive"] = _d("PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR")
    timeout: float = _d("PLASMA_SUBSCRIBER_REDIS_TIMEOUT")
    retry_interval: float = _d("PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL")
    max_retry: int = _d("PLASMA_SUBSCRIBER_REDIS_MAX_RETRY")


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceConfig:
    """Where events come from: ``type`` is ``mock``, ``redis``, ``redis-stream``, ``nats`` or
    ``nats-jetstream``."""

    type: Literal["mock", "redis", "redis-stream", "nats", "nats-jetstream"] = _d(
        "PLASMA_SUBSCRIBER_TYPE"
    )
    mock_interval: float = _d("PLASMA_SUBSCRIBER_MOCK_INTERVAL")
    redis: RedisConfig = field(default_factory=RedisConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """One log stream: ``out`` is ``stdout``, ``stderr`` or a file path."""

    out: str = _d("PLASMA_ERROR_LOG_OUT")
    level: LogLevel = _DEFAULT_LEVEL


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """TLS is on when both files are set."""

    cert_file: str = _d("PLASMA_TLS_CERT_FILE")
    key_file: str = _d("PLASMA_TLS_KEY_FILE")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file and self.key_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """The periodic metrics sender (``type`` empty: off)."""

    type: Literal["", "log", "syslog"] = _d("PLASMA_METRICS_TYPE")
    interval: float = _d("PLASMA_METRICS_INTERVAL")
    log_out: str = _d("PLASMA_METRICS_LOG_OUT")
    log_prefix: str = _d("PLASMA_METRICS_LOG_PREFIX")
    log_flag: int = _d("PLASMA_METRICS_LOG_FLAG")
    log_interval: float = _d("PLASMA_METRICS_LOG_INTERVAL")
    syslog_tag: str = _d("PLASMA_METRICS_SYSLOG_TAG")
    syslog_interval: float = _d("PLASMA_METRICS_SYSLOG_INTERVAL")
    syslog_severity: int = _d("PLASMA_METRICS_SYSLOG_SEVERITY")
    syslog_facility: int = _d("PLASMA_METRICS_SYSLOG_FACILITY")
    syslog_network: str = _d("PLASMA_METRICS_SYSLOG_NETWORK")
    syslog_addr: str = _d("PLASMA_METRICS_SYSLOG_ADDR")


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishConfig:
    """The publish API: ``PublishConfig(api=True, path="/publish", max_body=1 << 20)``."""

    api: bool = _d("PLASMA_PUBLISH_API")
    path: str = _d("PLASMA_PUBLISH_PATH")
    max_body: int = _d("PLASMA_PUBLISH_MAX_BODY")


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """What one client or message may cost; beyond it, a clean refusal."""

    max_connections: int = _d("PLASMA_MAX_CONNECTIONS")
    max_types: int = _d("PLASMA_MAX_TYPES")
    max_type_length: int = _d("PLASMA_MAX_TYPE_LENGTH")
    max_event_size: int = _d("PLASMA_MAX_EVENT_SIZE")
    max_request_line: int = _d("PLASMA_MAX_REQUEST_LINE")
    max_header_size: int = _d("PLASMA_MAX_HEADER_SIZE")
    max_headers: int = _d("PLASMA_MAX_HEADERS")
    header_timeout: float = _d("PLASMA_HEADER_TIMEOUT")
    grpc_max_streams: int = _d("PLASMA_GRPC_MAX_STREAMS")
    grpc_max_frame_size: int = _d("PLASMA_GRPC_MAX_FRAME_SIZE")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """Access control (JWT); on when one key is set. Secrets and tokens never appear in ``repr``."""

    jwt_secret: str = field(default=_d("PLASMA_AUTH_JWT_SECRET"), repr=False)
    jwt_public_key_file: str = _d("PLASMA_AUTH_JWT_PUBLIC_KEY_FILE")
    jwt_jwks_file: str = _d("PLASMA_AUTH_JWT_JWKS_FILE")
    jwt_algorithms: tuple[str, ...] = _d("PLASMA_AUTH_JWT_ALGORITHMS")
    jwt_audience: str = _d("PLASMA_AUTH_JWT_AUDIENCE")
    jwt_issuer: str = _d("PLASMA_AUTH_JWT_ISSUER")
    jwt_leeway: float = _d("PLASMA_AUTH_JWT_LEEWAY")
    public_types: tuple[str, ...] = _d("PLASMA_AUTH_PUBLIC_TYPES")
    cookie: str = _d("PLASMA_AUTH_COOKIE")
    metrics_token: str = field(default=_d("PLASMA_METRICS_TOKEN"), repr=False)
    debug_token: str = field(default=_d("PLASMA_DEBUG_TOKEN"), repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key_file or self.jwt_jwks_file)


# Settings that mean nothing without a key: set alone, they would suggest access control is on.
_NEEDS_A_KEY = (
    "PLASMA_AUTH_JWT_ALGORITHMS",
    "PLASMA_AUTH_JWT_AUDIENCE",
    "PLASMA_AUTH_JWT_ISSUER",
    "PLASMA_AUTH_PUBLIC_TYPES",
)


def _auth(r: _Reader) -> AuthConfig:
    auth = AuthConfig(
        jwt_secret=r["PLASMA_AUTH_JWT_SECRET"],
        jwt_public_key_file=r["PLASMA_AUTH_JWT_PUBLIC_KEY_FILE"],
        jwt_jwks_file=r["PLASMA_AUTH_JWT_JWKS_FILE"],
        jwt_algorithms=r["PLASMA_AUTH_JWT_ALGORITHMS"],
        jwt_audience=r["PLASMA_AUTH_JWT_AUDIENCE"],
        jwt_issuer=r["PLASMA_AUTH_JWT_ISSUER"],
        jwt_leeway=r["PLASMA_AUTH_JWT_LEEWAY"],
        public_types=r["PLASMA_AUTH_PUBLIC_TYPES"],
        cookie=r["PLASMA_AUTH_COOKIE"],
        metrics_token=r["PLASMA_METRICS_TOKEN"],
        debug_token=r["PLASMA_DEBUG_TOKEN"],
    )
    if auth.enabled:
        # Load the keys once here, so a bad key file stops start-up before any worker starts.
        from plasma.auth.keys import load_keys

        load_keys(
            secret=auth.jwt_secret,
            public_key_file=auth.jwt_public_key_file,
            jwks_file=auth.jwt_jwks_file,
            algorithms=",".join(auth.jwt_algorithms),
        )
    if auth.metrics_token or auth.debug_token:
        from plasma.auth.static import StaticToken

        for name, token in (
            ("PLASMA_METRICS_TOKEN", auth.metrics_token),
            ("PLASMA_DEBUG_TOKEN", auth.debug_token),
        ):
            if token:
                StaticToken(token, name)
    if not auth.enabled:
        for name in _NEEDS_A_KEY:
            if r.raw(name):
                raise ConfigError(
                    name,
                    r.raw(name),
                    "to be unset without a key: set PLASMA_AUTH_JWT_SECRET, "
                    "PLASMA_AUTH_JWT_PUBLIC_KEY_FILE or PLASMA_AUTH_JWT_JWKS_FILE to turn access "
                    "control on",
                )
    return auth


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything plasma needs to start, e.g. ``Config.from_env({"PLASMA_PORT": "9000"})``."""

    host: str = _d("PLASMA_HOST")
    port: int = _d("PLASMA_PORT")
    grpc_port: int | None = _d("PLASMA_GRPC_PORT")
    debug: bool = _d("PLASMA_DEBUG")
    origin: str = _d("PLASMA_ORIGIN")
    sse: SSEConfig = field(default_factory=SSEConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    error_log: LogConfig = field(default_factory=LogConfig)
    access_log: LogConfig = field(default_factory=LogConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    history_size: int = _d("PLASMA_HISTORY_SIZE")
    history_ttl: float = _d("PLASMA_HISTORY_TTL")
    history_max_bytes: int = _d("PLASMA_HISTORY_MAX_BYTES")
    client_buffer: int = _d("PLASMA_CLIENT_BUFFER")
    max_buffered_bytes: int = _d("PLASMA_MAX_BUFFERED_BYTES")
    workers: int = _d("PLASMA_WORKERS")
    listen_backlog: int = _d("PLASMA_LISTEN_BACKLOG")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        """Build a ``Config`` from ``PLASMA_*`` variables; raise ``ConfigError`` on a bad value."""
        r = _Reader(environ)
        try:
            return cls._build(r)
        except ConfigError as exc:
            alias = r.aliased.get(exc.name)
            if alias is None:
                raise
            # Name the variable the environment actually set (the original's misspelling).
            raise ConfigError(alias, exc.value, exc.expected) from None

    @classmethod
    def _build(cls, r: _Reader) -> Config:
        source_type = r["PLASMA_SUBSCRIBER_TYPE"]
        address: RedisAddress = r["PLASMA_SUBSCRIBER_REDIS_ADDR"]
        channels = r["PLASMA_SUBSCRIBER_REDIS_CHANNELS"]
        if source_type.startswith("nats") and not r["PLASMA_SUBSCRIBER_NATS_SUBJECTS"]:
            raise ConfigError(
                "PLASMA_SUBSCRIBER_NATS_SUBJECTS",
                r.raw("PLASMA_SUBSCRIBER_NATS_SUBJECTS"),
                f"at least one subject when PLASMA_SUBSCRIBER_TYPE={source_type}",
            )
        if source_type.startswith("redis") and not channels:
            raise ConfigError(
                "PLASMA_SUBSCRIBER_REDIS_CHANNELS",
                r.raw("PLASMA_SUBSCRIBER_REDIS_CHANNELS"),
                f"at least one channel (or stream) name when PLASMA_SUBSCRIBER_TYPE={source_type}",
            )
        if (
            r["PLASMA_SUBSCRIBER_REDIS_CLUSTER"]
            and r["PLASMA_SUBSCRIBER_REDIS_SHARDED"]
            and source_type == "redis"
            and any(not set("*?[").isdisjoint(channel) for channel in channels)
        ):
            raise ConfigError(
                "PLASMA_SUBSCRIBER_REDIS_CHANNELS",
                r.raw("PLASMA_SUBSCRIBER_REDIS_CHANNELS"),
                "plain channel names: sharded pub/sub has no patterns "
                "(set PLASMA_SUBSCRIBER_REDIS_SHARDED=false to use PSUBSCRIBE on a cluster)",
            )
        tls = TLSConfig(cert_file=r["PLASMA_TLS_CERT_FILE"], key_file=r["PLASMA_TLS_KEY_FILE"])
        if bool(tls.cert_file) != bool(tls.key_file):
            missing = "PLASMA_TLS_KEY_FILE" if tls.cert_file else "PLASMA_TLS_CERT_FILE"
            raise ConfigError(missing, "", "a file path: TLS needs both cert and key files")
        return cls(
            host=r["PLASMA_HOST"].strip(),
            port=r["PLASMA_PORT"],
            grpc_port=r["PLASMA_GRPC_PORT"],
            debug=r["PLASMA_DEBUG"],
            origin=r["PLASMA_ORIGIN"],
            sse=SSEConfig(
                retry_ms=r["PLASMA_SSE_RETRY"],
                event_query=r["PLASMA_SSE_EVENTQUERY"],
                heartbeat=r["PLASMA_SSE_HEARTBEAT"],
            ),
            source=SourceConfig(
                type=source_type,
                mock_interval=r["PLASMA_SUBSCRIBER_MOCK_INTERVAL"],
                redis=RedisConfig(
                    host=address.addrs[0][0],
                    port=address.addrs[0][1],
                    seeds=address.addrs if len(address.addrs) > 1 else (),
                    username=address.username or r["PLASMA_SUBSCRIBER_REDIS_USERNAME"],
                    password=address.password or r["PLASMA_SUBSCRIBER_REDIS_PASSWORD"],
                    db=r["PLASMA_SUBSCRIBER_REDIS_DB"] if address.db is None else address.db,
                    tls=address.tls or r["PLASMA_SUBSCRIBER_REDIS_TLS"],
                    tls_ca_file=r["PLASMA_SUBSCRIBER_REDIS_TLS_CA_FILE"],
                    cluster=r["PLASMA_SUBSCRIBER_REDIS_CLUSTER"],
                    sharded=r["PLASMA_SUBSCRIBER_REDIS_SHARDED"],
                    sentinels=r["PLASMA_SUBSCRIBER_REDIS_SENTINELS"],
                    sentinel_master=r["PLASMA_SUBSCRIBER_REDIS_SENTINEL_MASTER"],
                    sentinel_password=r["PLASMA_SUBSCRIBER_REDIS_SENTINEL_PASSWORD"],
                    channels=channels,
                    over_max_retry=r["PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR"],
                    timeout=r["PLASMA_SUBSCRIBER_REDIS_TIMEOUT"],
                    retry_interval=r["PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL"],
                    max_retry=r["PLASMA_SUBSCRIBER_REDIS_MAX_RETRY"],
                ),
                nats=NatsConfig(
                    servers=r["PLASMA_SUBSCRIBER_NATS_URL"],
                    subjects=r["PLASMA_SUBSCRIBER_NATS_SUBJECTS"],
                    stream=r["PLASMA_SUBSCRIBER_NATS_STREAM"],
                    user=r["PLASMA_SUBSCRIBER_NATS_USER"],
                    password=r["PLASMA_SUBSCRIBER_NATS_PASSWORD"],
                    token=r["PLASMA_SUBSCRIBER_NATS_TOKEN"],
                    creds_file=r["PLASMA_SUBSCRIBER_NATS_CREDS_FILE"],
                    tls=r["PLASMA_SUBSCRIBER_NATS_TLS"],
                    tls_ca_file=r["PLASMA_SUBSCRIBER_NATS_TLS_CA_FILE"],
                    over_max_retry=r["PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR"],
                    timeout=r["PLASMA_SUBSCRIBER_REDIS_TIMEOUT"],
                    retry_interval=r["PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL"],
                    max_retry=r["PLASMA_SUBSCRIBER_REDIS_MAX_RETRY"],
                ),
            ),
            error_log=LogConfig(out=r["PLASMA_ERROR_LOG_OUT"], level=r["PLASMA_ERROR_LOG_LEVEL"]),
            access_log=LogConfig(
                out=r["PLASMA_ACCESS_LOG_OUT"], level=r["PLASMA_ACCESS_LOG_LEVEL"]
            ),
            tls=tls,
            metrics=r.section(MetricsConfig, "PLASMA_METRICS_"),
            limits=r.section(LimitsConfig, "PLASMA_"),
            auth=_auth(r),
            publish=r.section(PublishConfig, "PLASMA_PUBLISH_"),
            history_size=r["PLASMA_HISTORY_SIZE"],
            history_ttl=r["PLASMA_HISTORY_TTL"],
            history_max_bytes=r["PLASMA_HISTORY_MAX_BYTES"],
            client_buffer=r["PLASMA_CLIENT_BUFFER"],
            max_buffered_bytes=r["PLASMA_MAX_BUFFERED_BYTES"],
            workers=r["PLASMA_WORKERS"],
            listen_backlog=r["PLASMA_LISTEN_BACKLOG"],
        )
