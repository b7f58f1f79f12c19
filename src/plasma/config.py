"""Settings: every ``PLASMA_*`` environment variable, parsed once into frozen dataclasses.

This module is the only reader of the environment. ``Config.from_env(os.environ)`` either
returns a complete, typed ``Config`` or raises ``ConfigError`` naming the variable, the
value and what was expected. Names, types and defaults follow the 2017 original's README;
durations and booleans are parsed the way Go parses them, so existing deployments keep
their configuration unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from plasma.errors import ConfigError

__all__ = [
    "SETTINGS",
    "Config",
    "LimitsConfig",
    "LogConfig",
    "MetricsConfig",
    "RedisConfig",
    "SSEConfig",
    "Setting",
    "SourceConfig",
    "TLSConfig",
    "parse_bool",
    "parse_duration",
    "settings_help",
]

LogLevel = Literal["debug", "info", "warn", "error", "fatal", "panic"]

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


# --- the settings table ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: its name, default text, kind and a one-line description."""

    name: str
    default: str
    kind: str
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("PLASMA_HOST", "", "string", "interface to listen on (empty: all interfaces)"),
    Setting("PLASMA_PORT", "8080", "port", "TCP port for SSE, gRPC and the meta endpoints"),
    Setting("PLASMA_GRPC_PORT", "", "port", "optional second port that serves gRPC only"),
    Setting("PLASMA_DEBUG", "false", "bool", "serve the /debug page and publish endpoint"),
    Setting("PLASMA_ORIGIN", "", "string", "Access-Control-Allow-Origin value (empty: omitted)"),
    Setting("PLASMA_SSE_RETRY", "2000", "int", "SSE retry: milliseconds clients wait to reconnect"),
    Setting("PLASMA_SSE_EVENTQUERY", "eventType", "string", "SSE query parameter listing types"),
    Setting("PLASMA_SSE_HEARTBEAT", "10s", "duration", "interval of the :heartbeat comment"),
    Setting("PLASMA_SUBSCRIBER_TYPE", "mock", "choice", "source: mock, redis or redis-stream"),
    Setting("PLASMA_SUBSCRIBER_MOCK_INTERVAL", "1s", "duration", "mock source: event interval"),
    Setting("PLASMA_SUBSCRIBER_REDIS_ADDR", "localhost:6379", "host:port", "Redis address"),
    Setting("PLASMA_SUBSCRIBER_REDIS_PASSWORD", "", "string", "Redis password", secret=True),
    Setting("PLASMA_SUBSCRIBER_REDIS_DB", "0", "int", "Redis database number"),
    Setting("PLASMA_SUBSCRIBER_REDIS_CHANNELS", "", "list", "channels or streams, a,b,c"),
    Setting(
        "PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR",
        "alive",
        "choice",
        "after MAX_RETRY failed reconnects: die (exit 1) or alive (keep retrying)",
    ),
    Setting("PLASMA_SUBSCRIBER_REDIS_TIMEOUT", "1s", "duration", "Redis connect/command timeout"),
    Setting("PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL", "5s", "duration", "wait between reconnects"),
    Setting("PLASMA_SUBSCRIBER_REDIS_MAX_RETRY", "5", "int", "failed reconnects before die/alive"),
    Setting("PLASMA_ERROR_LOG_OUT", "stdout", "output", "error log: stdout, stderr or a file"),
    Setting("PLASMA_ERROR_LOG_LEVEL", "info", "level", "panic, fatal, error, warn, info, debug"),
    Setting("PLASMA_ACCESS_LOG_OUT", "stdout", "output", "access log: stdout, stderr or a file"),
    Setting("PLASMA_ACCESS_LOG_LEVEL", "info", "level", "panic, fatal, error, warn, info, debug"),
    Setting("PLASMA_TLS_CERT_FILE", "", "path", "TLS certificate (PEM); TLS needs both files"),
    Setting("PLASMA_TLS_KEY_FILE", "", "path", "TLS private key (PEM)"),
    Setting("PLASMA_METRICS_TYPE", "", "choice", "metrics sender: log, syslog or empty (off)"),
    Setting("PLASMA_METRICS_INTERVAL", "10s", "duration", "interval for sampling metrics"),
    Setting("PLASMA_METRICS_LOG_OUT", "stdout", "output", "metrics log: stdout, stderr or file"),
    Setting("PLASMA_METRICS_LOG_PREFIX", "metrics", "string", "prefix of each metrics log line"),
    Setting("PLASMA_METRICS_LOG_FLAG", "4", "int", "Go log flags (4 = log.Lmicroseconds)"),
    Setting("PLASMA_METRICS_LOG_INTERVAL", "1m", "duration", "interval for writing to the log"),
    Setting("PLASMA_METRICS_SYSLOG_TAG", "plasma", "string", "syslog tag"),
    Setting("PLASMA_METRICS_SYSLOG_INTERVAL", "1m", "duration", "interval for sending to syslog"),
    Setting("PLASMA_METRICS_SYSLOG_SEVERITY", "0", "int", "syslog severity (0-7)"),
    Setting("PLASMA_METRICS_SYSLOG_FACILITY", "0", "int", "syslog facility (0-23, Go's order)"),
    Setting("PLASMA_METRICS_SYSLOG_NETWORK", "", "string", "udp, tcp, unix or empty (local)"),
    Setting("PLASMA_METRICS_SYSLOG_ADDR", "", "string", "syslog address (host:port or path)"),
    Setting("PLASMA_HISTORY_SIZE", "10000", "int", "events kept for resume (0: no history)"),
    Setting("PLASMA_HISTORY_TTL", "5m", "duration", "oldest event kept for resume (0: no limit)"),
    Setting("PLASMA_CLIENT_BUFFER", "1048576", "int", "bytes a client may have unsent"),
    Setting("PLASMA_MAX_CONNECTIONS", "50000", "int", "open streams per process, then 503"),
    Setting("PLASMA_MAX_TYPES", "128", "int", "event types one subscription may list"),
    Setting("PLASMA_MAX_TYPE_LENGTH", "256", "int", "longest event type a client may ask for"),
    Setting("PLASMA_MAX_EVENT_SIZE", "1048576", "int", "largest event from the source (bytes)"),
    Setting("PLASMA_MAX_REQUEST_LINE", "8190", "int", "longest HTTP request line (bytes)"),
    Setting("PLASMA_MAX_HEADER_SIZE", "8190", "int", "longest HTTP header line (bytes)"),
    Setting("PLASMA_MAX_HEADERS", "64", "int", "most HTTP request header lines"),
    Setting("PLASMA_HEADER_TIMEOUT", "10s", "duration", "time to send request headers / preface"),
    Setting("PLASMA_GRPC_MAX_STREAMS", "100", "int", "concurrent gRPC streams per connection"),
    Setting("PLASMA_GRPC_MAX_FRAME_SIZE", "16384", "int", "HTTP/2 max frame size we accept"),
    Setting("PLASMA_WORKERS", "1", "int", "worker processes sharing the port (0: one per core)"),
)

_BY_NAME = {s.name: s for s in SETTINGS}
_ALIASES = {"PLASMA_METRICS_SYSLOG_NETWORDK": "PLASMA_METRICS_SYSLOG_NETWORK"}


def settings_help() -> str:
    """The settings table for ``plasma --help``."""
    width = max(len(s.name) for s in SETTINGS)
    lines = ["settings (environment variables):"]
    for s in SETTINGS:
        default = s.default if s.default else '""'
        lines.append(f"  {s.name:<{width}}  {s.kind:<9} default {default:<15} {s.help}")
    return "\n".join(lines)


class _Reader:
    """Reads settings from a mapping, turning every bad value into one ``ConfigError``."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._env = dict(environ)
        self.aliased: dict[str, str] = {}
        """Settings read through an alias: name -> the alias the environment used."""
        for alias, name in _ALIASES.items():
            if alias in self._env and name not in self._env:
                self._env[name] = self._env[alias]
                self.aliased[name] = alias

    def raw(self, name: str) -> str:
        value = self._env.get(name)
        if value is None or value == "":
            return _BY_NAME[name].default
        return value

    def get(self, name: str, parse: Callable[[str], Any], expected: str) -> Any:
        value = self.raw(name)
        try:
            return parse(value)
        except (ValueError, OverflowError):
            raise ConfigError(name, value, expected) from None

    def string(self, name: str) -> str:
        return self.raw(name)

    def boolean(self, name: str) -> bool:
        return bool(self.get(name, parse_bool, "a boolean (true/false, 1/0, t/f)"))

    def integer(self, name: str, low: int | None = None, high: int | None = None) -> int:
        value = int(self.get(name, _parse_int, "an integer"))
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(name, self.raw(name), f"an integer {bounds}")
        return value

    def duration(self, name: str, *, positive: bool = True) -> float:
        expected = "a Go duration such as 500ms, 1s or 1m30s"
        value = float(self.get(name, parse_duration, expected))
        if value < 0 or (positive and value == 0):
            raise ConfigError(name, self.raw(name), f"a {'positive' if positive else ''} duration")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name).strip().lower()
        if value not in choices:
            raise ConfigError(
                name, self.raw(name), "one of " + ", ".join(c or '""' for c in choices)
            )
        return value

    def port(self, name: str, *, optional: bool = False) -> int | None:
        value = self.raw(name).strip()
        if optional and value == "":
            return None
        try:
            port = _parse_int(value)
        except ValueError:
            port = -1
        if not 0 <= port <= 65535:
            raise ConfigError(name, value, "a TCP port number between 0 and 65535")
        return port

    def level(self, name: str) -> LogLevel:
        value = self.raw(name).strip().lower()
        if value == "warning":
            value = "warn"
        if value not in ("panic", "fatal", "error", "warn", "info", "debug"):
            raise ConfigError(name, self.raw(name), "one of panic, fatal, error, warn, info, debug")
        return value  # type: ignore[return-value]


def _parse_addr(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError("missing port")
    port = _parse_int(port_text)
    if not 0 < port <= 65535:
        raise ValueError("bad port")
    return host.strip("[]") or "localhost", port


# --- the typed configuration -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SSEConfig:
    """How SSE streams are framed: ``SSEConfig(retry_ms=2000, event_query="eventType")``."""

    retry_ms: int = 2000
    event_query: str = "eventType"
    heartbeat: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    """The Redis pub/sub source. ``password`` never appears in ``repr``."""

    host: str = "localhost"
    port: int = 6379
    password: str = field(default="", repr=False)
    db: int = 0
    channels: tuple[str, ...] = ()
    over_max_retry: Literal["die", "alive"] = "alive"
    timeout: float = 1.0
    retry_interval: float = 5.0
    max_retry: int = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceConfig:
    """Where events come from: ``type`` is ``mock`` or ``redis``."""

    type: Literal["mock", "redis", "redis-stream"] = "mock"
    mock_interval: float = 1.0
    redis: RedisConfig = field(default_factory=RedisConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """One log stream: ``out`` is ``stdout``, ``stderr`` or a file path."""

    out: str = "stdout"
    level: LogLevel = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """TLS is on when both files are set."""

    cert_file: str = ""
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file and self.key_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """The periodic metrics sender (``type`` empty: off)."""

    type: Literal["", "log", "syslog"] = ""
    interval: float = 10.0
    log_out: str = "stdout"
    log_prefix: str = "metrics"
    log_flag: int = 4
    log_interval: float = 60.0
    syslog_tag: str = "plasma"
    syslog_interval: float = 60.0
    syslog_severity: int = 0
    syslog_facility: int = 0
    syslog_network: str = ""
    syslog_addr: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """What one client or message may cost; beyond it, a clean refusal."""

    max_connections: int = 50000
    max_types: int = 128
    max_type_length: int = 256
    max_event_size: int = 1 << 20
    max_request_line: int = 8190
    max_header_size: int = 8190
    max_headers: int = 64
    header_timeout: float = 10.0
    grpc_max_streams: int = 100
    grpc_max_frame_size: int = 16384


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything plasma needs to start, e.g. ``Config.from_env({"PLASMA_PORT": "9000"})``."""

    host: str = ""
    port: int = 8080
    grpc_port: int | None = None
    debug: bool = False
    origin: str = ""
    sse: SSEConfig = field(default_factory=SSEConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    error_log: LogConfig = field(default_factory=LogConfig)
    access_log: LogConfig = field(default_factory=LogConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    history_size: int = 10000
    history_ttl: float = 300.0
    client_buffer: int = 1 << 20
    workers: int = 1

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
        source_type = r.choice("PLASMA_SUBSCRIBER_TYPE", ("mock", "redis", "redis-stream"))
        host, port = r.get(
            "PLASMA_SUBSCRIBER_REDIS_ADDR", _parse_addr, "host:port, e.g. localhost:6379"
        )
        channels = _parse_list(r.string("PLASMA_SUBSCRIBER_REDIS_CHANNELS"))
        if source_type != "mock" and not channels:
            raise ConfigError(
                "PLASMA_SUBSCRIBER_REDIS_CHANNELS",
                r.raw("PLASMA_SUBSCRIBER_REDIS_CHANNELS"),
                f"at least one channel (or stream) name when PLASMA_SUBSCRIBER_TYPE={source_type}",
            )
        redis = RedisConfig(
            host=host,
            port=port,
            password=r.string("PLASMA_SUBSCRIBER_REDIS_PASSWORD"),
            db=r.integer("PLASMA_SUBSCRIBER_REDIS_DB", 0),
            channels=channels,
            over_max_retry=r.choice(  # type: ignore[arg-type]
                "PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR", ("alive", "die")
            ),
            timeout=r.duration("PLASMA_SUBSCRIBER_REDIS_TIMEOUT"),
            retry_interval=r.duration("PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL"),
            max_retry=r.integer("PLASMA_SUBSCRIBER_REDIS_MAX_RETRY", 1),
        )
        tls = TLSConfig(
            cert_file=r.string("PLASMA_TLS_CERT_FILE"), key_file=r.string("PLASMA_TLS_KEY_FILE")
        )
        if bool(tls.cert_file) != bool(tls.key_file):
            missing = "PLASMA_TLS_KEY_FILE" if tls.cert_file else "PLASMA_TLS_CERT_FILE"
            raise ConfigError(missing, "", "a file path: TLS needs both cert and key files")
        metrics_type = r.choice("PLASMA_METRICS_TYPE", ("", "log", "syslog"))
        metrics = MetricsConfig(
            type=metrics_type,  # type: ignore[arg-type]
            interval=r.duration("PLASMA_METRICS_INTERVAL"),
            log_out=r.string("PLASMA_METRICS_LOG_OUT"),
            log_prefix=r.string("PLASMA_METRICS_LOG_PREFIX"),
            log_flag=r.integer("PLASMA_METRICS_LOG_FLAG", 0, 127),
            log_interval=r.duration("PLASMA_METRICS_LOG_INTERVAL"),
            syslog_tag=r.string("PLASMA_METRICS_SYSLOG_TAG"),
            syslog_interval=r.duration("PLASMA_METRICS_SYSLOG_INTERVAL"),
            syslog_severity=r.integer("PLASMA_METRICS_SYSLOG_SEVERITY", 0, 7),
            syslog_facility=r.integer("PLASMA_METRICS_SYSLOG_FACILITY", 0, 23),
            syslog_network=r.choice(
                "PLASMA_METRICS_SYSLOG_NETWORK", ("", "udp", "tcp", "unix", "unixgram")
            ),
            syslog_addr=r.string("PLASMA_METRICS_SYSLOG_ADDR"),
        )
        event_query = r.string("PLASMA_SSE_EVENTQUERY").strip()
        if not event_query:
            raise ConfigError("PLASMA_SSE_EVENTQUERY", event_query, "a query parameter name")
        return cls(
            host=r.string("PLASMA_HOST").strip(),
            port=r.port("PLASMA_PORT") or 0,
            grpc_port=r.port("PLASMA_GRPC_PORT", optional=True),
            debug=r.boolean("PLASMA_DEBUG"),
            origin=r.string("PLASMA_ORIGIN"),
            sse=SSEConfig(
                retry_ms=r.integer("PLASMA_SSE_RETRY", 0),
                event_query=event_query,
                heartbeat=r.duration("PLASMA_SSE_HEARTBEAT"),
            ),
            source=SourceConfig(
                type=source_type,  # type: ignore[arg-type]
                mock_interval=r.duration("PLASMA_SUBSCRIBER_MOCK_INTERVAL"),
                redis=redis,
            ),
            error_log=LogConfig(
                out=r.string("PLASMA_ERROR_LOG_OUT"), level=r.level("PLASMA_ERROR_LOG_LEVEL")
            ),
            access_log=LogConfig(
                out=r.string("PLASMA_ACCESS_LOG_OUT"), level=r.level("PLASMA_ACCESS_LOG_LEVEL")
            ),
            tls=tls,
            metrics=metrics,
            limits=LimitsConfig(
                max_connections=r.integer("PLASMA_MAX_CONNECTIONS", 1),
                max_types=r.integer("PLASMA_MAX_TYPES", 1),
                max_type_length=r.integer("PLASMA_MAX_TYPE_LENGTH", 1),
                max_event_size=r.integer("PLASMA_MAX_EVENT_SIZE", 64),
                max_request_line=r.integer("PLASMA_MAX_REQUEST_LINE", 256),
                max_header_size=r.integer("PLASMA_MAX_HEADER_SIZE", 256),
                max_headers=r.integer("PLASMA_MAX_HEADERS", 8),
                header_timeout=r.duration("PLASMA_HEADER_TIMEOUT"),
                grpc_max_streams=r.integer("PLASMA_GRPC_MAX_STREAMS", 1),
                grpc_max_frame_size=r.integer("PLASMA_GRPC_MAX_FRAME_SIZE", 16384, 16777215),
            ),
            history_size=r.integer("PLASMA_HISTORY_SIZE", 0, 10_000_000),
            history_ttl=r.duration("PLASMA_HISTORY_TTL", positive=False),
            client_buffer=r.integer("PLASMA_CLIENT_BUFFER", 1024),
            workers=r.integer("PLASMA_WORKERS", 0, 256),
        )
