"""Config: every PLASMA_* setting, Go durations and booleans, and bad values naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plasma.config import (
    SETTINGS,
    Config,
    RedisConfig,
    parse_bool,
    parse_duration,
    setting_default,
    settings_markdown,
)
from plasma.errors import ConfigError


def test_defaults_follow_the_readme() -> None:
    c = Config.from_env({})
    assert c.host == ""
    assert c.port == 8080
    assert c.grpc_port is None
    assert c.debug is False
    assert c.origin == ""
    assert c.sse.retry_ms == 2000
    assert c.sse.event_query == "eventType"
    assert c.sse.heartbeat == 10.0
    assert c.source.type == "mock"
    assert c.source.mock_interval == 1.0
    r = c.source.redis
    assert (r.host, r.port) == ("localhost", 6379)
    assert r.password == ""
    assert r.db == 0
    assert r.channels == ()
    assert r.over_max_retry == "alive"
    assert r.timeout == 1.0
    assert r.retry_interval == 5.0
    assert r.max_retry == 5
    assert (c.error_log.out, c.error_log.level) == ("stdout", "info")
    assert (c.access_log.out, c.access_log.level) == ("stdout", "info")
    assert c.tls.enabled is False
    assert (c.tls.cert_file, c.tls.key_file) == ("", "")
    m = c.metrics
    assert m.type == ""
    assert m.interval == 10.0
    assert m.log_out == "stdout"
    assert m.log_prefix == "metrics"
    assert m.log_flag == 4  # log.Lmicroseconds
    assert m.log_interval == 60.0
    assert m.syslog_tag == "plasma"
    assert m.syslog_interval == 60.0
    assert (m.syslog_severity, m.syslog_facility) == (0, 0)
    assert (m.syslog_network, m.syslog_addr) == ("", "")


# Every variable in the 2017 original's README settings table: each must still be understood.
ORIGINAL_SETTINGS = [
    "PLASMA_PORT",
    "PLASMA_DEBUG",
    "PLASMA_ORIGIN",
    "PLASMA_SSE_RETRY",
    "PLASMA_SSE_EVENTQUERY",
    "PLASMA_SUBSCRIBER_TYPE",
    "PLASMA_SUBSCRIBER_REDIS_ADDR",
    "PLASMA_SUBSCRIBER_REDIS_PASSWORD",
    "PLASMA_SUBSCRIBER_REDIS_DB",
    "PLASMA_SUBSCRIBER_REDIS_CHANNELS",
    "PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR",
    "PLASMA_SUBSCRIBER_REDIS_TIMEOUT",
    "PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL",
    "PLASMA_ERROR_LOG_OUT",
    "PLASMA_ERROR_LOG_LEVEL",
    "PLASMA_ACCESS_LOG_OUT",
    "PLASMA_ACCESS_LOG_LEVEL",
    "PLASMA_TLS_CERT_FILE",
    "PLASMA_TLS_KEY_FILE",
    "PLASMA_METRICS_TYPE",
    "PLASMA_METRICS_INTERVAL",
    "PLASMA_METRICS_LOG_OUT",
    "PLASMA_METRICS_LOG_PREFIX",
    "PLASMA_METRICS_LOG_FLAG",
    "PLASMA_METRICS_LOG_INTERVAL",
    "PLASMA_METRICS_SYSLOG_TAG",
    "PLASMA_METRICS_SYSLOG_INTERVAL",
    "PLASMA_METRICS_SYSLOG_SEVERITY",
    "PLASMA_METRICS_SYSLOG_FACILITY",
    "PLASMA_METRICS_SYSLOG_NETWORDK",
    "PLASMA_METRICS_SYSLOG_ADDR",
]


def test_every_setting_of_the_original_is_known() -> None:
    names = {s.name for s in SETTINGS} | {"PLASMA_METRICS_SYSLOG_NETWORDK"}
    assert set(ORIGINAL_SETTINGS) - names == set()
    for name in ORIGINAL_SETTINGS:
        Config.from_env({name: ""})  # read (an empty value means the default), never rejected


def test_the_readme_settings_table_is_the_settings_table() -> None:
    """README.md's table is ``settings_markdown()`` verbatim: one source for docs and code."""
    readme = (Path(__file__).parents[1] / "README.md").read_text("utf-8")
    table = [line for line in readme.splitlines() if line.startswith("| `PLASMA_")]
    expected = settings_markdown().splitlines()
    assert table == [line for line in expected if line.startswith("| `PLASMA_")], (
        "README.md's settings table differs from plasma.config.SETTINGS; paste the output of\n"
        "python -c 'from plasma.config import settings_markdown; print(settings_markdown())'"
    )


def test_dataclass_defaults_are_the_settings_defaults() -> None:
    """``Config()`` (code building one by hand) and an empty environment agree on every value."""
    assert Config() == Config.from_env({})
    for setting in SETTINGS:
        assert setting_default(setting.name) == setting.read(""), setting.name


def test_every_setting_is_read() -> None:
    """Setting each variable to its own default yields the default config (none is ignored)."""
    env = {s.name: s.default for s in SETTINGS if s.default}
    assert Config.from_env(env) == Config.from_env({})


def test_empty_value_means_default() -> None:
    assert Config.from_env({"PLASMA_PORT": "", "PLASMA_SSE_RETRY": ""}) == Config.from_env({})


def test_values_are_read() -> None:
    c = Config.from_env(
        {
            "PLASMA_PORT": "9000",
            "PLASMA_DEBUG": "true",
            "PLASMA_ORIGIN": "http://example.com",
            "PLASMA_SSE_RETRY": "500",
            "PLASMA_SSE_EVENTQUERY": "topics",
            "PLASMA_SSE_HEARTBEAT": "250ms",
            "PLASMA_SUBSCRIBER_TYPE": "redis",
            "PLASMA_SUBSCRIBER_REDIS_ADDR": "redis.local:6380",
            "PLASMA_SUBSCRIBER_REDIS_PASSWORD": "hunter2",
            "PLASMA_SUBSCRIBER_REDIS_DB": "3",
            "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "a,b",
            "PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR": "die",
            "PLASMA_SUBSCRIBER_REDIS_TIMEOUT": "2s",
            "PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL": "1m30s",
            "PLASMA_SUBSCRIBER_REDIS_MAX_RETRY": "7",
            "PLASMA_SUBSCRIBER_MOCK_INTERVAL": "100ms",
            "PLASMA_ERROR_LOG_OUT": "stderr",
            "PLASMA_ERROR_LOG_LEVEL": "warn",
            "PLASMA_ACCESS_LOG_OUT": "/tmp/access.log",
            "PLASMA_ACCESS_LOG_LEVEL": "error",
            "PLASMA_METRICS_TYPE": "syslog",
            "PLASMA_METRICS_SYSLOG_SEVERITY": "7",
            "PLASMA_METRICS_SYSLOG_FACILITY": "23",
        }
    )
    assert c.port == 9000
    assert c.debug is True
    assert c.origin == "http://example.com"
    assert (c.sse.retry_ms, c.sse.event_query, c.sse.heartbeat) == (500, "topics", 0.25)
    assert c.source.type == "redis"
    assert c.source.mock_interval == 0.1
    r = c.source.redis
    assert (r.host, r.port, r.password, r.db) == ("redis.local", 6380, "hunter2", 3)
    assert r.channels == ("a", "b")
    assert r.over_max_retry == "die"
    assert (r.timeout, r.retry_interval, r.max_retry) == (2.0, 90.0, 7)
    assert (c.error_log.out, c.error_log.level) == ("stderr", "warn")
    assert (c.access_log.out, c.access_log.level) == ("/tmp/access.log", "error")
    assert c.metrics.type == "syslog"
    assert (c.metrics.syslog_severity, c.metrics.syslog_facility) == (7, 23)


def test_redis_addresses_seeds_and_urls() -> None:
    def redis(**env: str) -> RedisConfig:
        base = {"PLASMA_SUBSCRIBER_TYPE": "redis", "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "a"}
        return Config.from_env({**base, **env}).source.redis

    seeds = redis(
        PLASMA_SUBSCRIBER_REDIS_ADDR="n1:7000, n2:7001", PLASMA_SUBSCRIBER_REDIS_CLUSTER="1"
    )
    assert (seeds.addrs, seeds.cluster, seeds.sharded) == (
        (("n1", 7000), ("n2", 7001)),
        True,
        True,
    )
    url = redis(
        PLASMA_SUBSCRIBER_REDIS_ADDR="rediss://app:p%40ss@cache.example:6380/4",
        PLASMA_SUBSCRIBER_REDIS_PASSWORD="not this one",
    )
    assert (url.host, url.port, url.db, url.tls) == ("cache.example", 6380, 4, True)
    assert (url.username, url.password) == ("app", "p@ss")
    assert "p@ss" not in repr(url)
    plain = redis(
        PLASMA_SUBSCRIBER_REDIS_ADDR="redis://h:1",
        PLASMA_SUBSCRIBER_REDIS_USERNAME="u",
        PLASMA_SUBSCRIBER_REDIS_TLS="true",
        PLASMA_SUBSCRIBER_REDIS_DB="2",
    )
    assert (plain.username, plain.tls, plain.db) == ("u", True, 2)
    sentinel = redis(PLASMA_SUBSCRIBER_REDIS_SENTINELS="s1:26379,s2:26379")
    assert sentinel.sentinels == (("s1", 26379), ("s2", 26379))
    assert sentinel.sentinel_master == "mymaster"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"PLASMA_SUBSCRIBER_REDIS_ADDR": "http://h:1"}, "PLASMA_SUBSCRIBER_REDIS_ADDR"),
        ({"PLASMA_SUBSCRIBER_REDIS_ADDR": "h:1,nope"}, "PLASMA_SUBSCRIBER_REDIS_ADDR"),
        ({"PLASMA_SUBSCRIBER_REDIS_SENTINELS": "s1"}, "PLASMA_SUBSCRIBER_REDIS_SENTINELS"),
        (
            {"PLASMA_SUBSCRIBER_REDIS_CLUSTER": "true", "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "n.*"},
            "PLASMA_SUBSCRIBER_REDIS_CHANNELS",
        ),
        ({"PLASMA_SUBSCRIBER_TYPE": "nats"}, "PLASMA_SUBSCRIBER_NATS_SUBJECTS"),
    ],
)
def test_bad_broker_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    base = {"PLASMA_SUBSCRIBER_TYPE": "redis", "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "a"}
    with pytest.raises(ConfigError) as info:
        Config.from_env({**base, **env})
    assert info.value.name == name


def test_nats_settings() -> None:
    c = Config.from_env(
        {
            "PLASMA_SUBSCRIBER_TYPE": "nats-jetstream",
            "PLASMA_SUBSCRIBER_NATS_URL": "nats://a:4222, nats://b:4222",
            "PLASMA_SUBSCRIBER_NATS_SUBJECTS": "news.>,rooms.*",
            "PLASMA_SUBSCRIBER_NATS_PASSWORD": "hunter2",
            "PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL": "2s",
        }
    )
    n = c.source.nats
    assert n.servers == ("nats://a:4222", "nats://b:4222")
    assert (n.subjects, n.stream, n.retry_interval) == (("news.>", "rooms.*"), "PLASMA", 2.0)
    assert "hunter2" not in repr(c)


def test_password_is_hidden_from_repr() -> None:
    c = Config.from_env({"PLASMA_SUBSCRIBER_REDIS_PASSWORD": "hunter2"})
    assert c.source.redis.password == "hunter2"
    assert "hunter2" not in repr(c)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1500us", 0.0015),
        ("1500µs", 0.0015),
        ("1000000ns", 0.001),
        ("1h1h", 7200.0),
        ("+5s", 5.0),
        ("-5s", -5.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("0s", 0.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "1", "10", "s", "1S", "1 s", "1x", "1.5", "5sec", "one", "1s2", "-"]
)
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_true(text: str) -> None:
    assert parse_bool(text) is True
    assert Config.from_env({"PLASMA_DEBUG": text}).debug is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_false(text: str) -> None:
    assert parse_bool(text) is False
    assert Config.from_env({"PLASMA_DEBUG": text}).debug is False


@pytest.mark.parametrize("text", ["yes", "no", "on", "off", "tRUE", "FaLsE", "2", "y", " true"])
def test_bad_go_booleans(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bool(text)
    with pytest.raises(ConfigError) as info:
        Config.from_env({"PLASMA_DEBUG": text})
    assert info.value.name == "PLASMA_DEBUG"


@pytest.mark.parametrize(
    ("text", "channels"),
    [
        ("events", ("events",)),
        ("a,b", ("a", "b")),
        (" a , b:c ,, d ", ("a", "b:c", "d")),
        ("a,", ("a",)),
    ],
)
def test_channel_lists(text: str, channels: tuple[str, ...]) -> None:
    c = Config.from_env(
        {"PLASMA_SUBSCRIBER_TYPE": "redis", "PLASMA_SUBSCRIBER_REDIS_CHANNELS": text}
    )
    assert c.source.redis.channels == channels


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PLASMA_PORT", "http"),
        ("PLASMA_PORT", "70000"),
        ("PLASMA_PORT", "-1"),
        ("PLASMA_PORT", "80.5"),
        ("PLASMA_GRPC_PORT", "grpc"),
        ("PLASMA_DEBUG", "yes"),
        ("PLASMA_SSE_RETRY", "soon"),
        ("PLASMA_SSE_RETRY", "-1"),
        ("PLASMA_SSE_RETRY", "2s"),
        ("PLASMA_SSE_EVENTQUERY", "   "),
        ("PLASMA_SSE_HEARTBEAT", "10"),
        ("PLASMA_SSE_HEARTBEAT", "-1s"),
        ("PLASMA_SUBSCRIBER_TYPE", "kafka"),
        ("PLASMA_SUBSCRIBER_MOCK_INTERVAL", "often"),
        ("PLASMA_SUBSCRIBER_REDIS_ADDR", "localhost"),
        ("PLASMA_SUBSCRIBER_REDIS_ADDR", "localhost:redis"),
        ("PLASMA_SUBSCRIBER_REDIS_ADDR", "localhost:0"),
        ("PLASMA_SUBSCRIBER_REDIS_ADDR", "localhost:65536"),
        ("PLASMA_SUBSCRIBER_REDIS_DB", "zero"),
        ("PLASMA_SUBSCRIBER_REDIS_DB", "-1"),
        ("PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR", "explode"),
        ("PLASMA_SUBSCRIBER_REDIS_TIMEOUT", "1"),
        ("PLASMA_SUBSCRIBER_REDIS_TIMEOUT", "0"),
        ("PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL", "5 s"),
        ("PLASMA_SUBSCRIBER_REDIS_MAX_RETRY", "five"),
        ("PLASMA_SUBSCRIBER_REDIS_MAX_RETRY", "0"),
        ("PLASMA_ERROR_LOG_LEVEL", "verbose"),
        ("PLASMA_ACCESS_LOG_LEVEL", "loud"),
        ("PLASMA_METRICS_TYPE", "statsd"),
        ("PLASMA_METRICS_INTERVAL", "10"),
        ("PLASMA_METRICS_LOG_FLAG", "Lmicroseconds"),
        ("PLASMA_METRICS_LOG_INTERVAL", "1minute"),
        ("PLASMA_METRICS_SYSLOG_INTERVAL", "x"),
        ("PLASMA_METRICS_SYSLOG_SEVERITY", "8"),
        ("PLASMA_METRICS_SYSLOG_FACILITY", "24"),
        ("PLASMA_METRICS_SYSLOG_NETWORK", "ipx"),
        ("PLASMA_CLIENT_BUFFER", "lots"),
        ("PLASMA_WORKERS", "-1"),
    ],
)
def test_bad_value_names_variable_and_value(name: str, value: str) -> None:
    env = {name: value}
    if name.startswith("PLASMA_SUBSCRIBER_REDIS_"):
        env.setdefault("PLASMA_SUBSCRIBER_TYPE", "redis")
        env.setdefault("PLASMA_SUBSCRIBER_REDIS_CHANNELS", "events")
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    err = info.value
    assert err.name == name
    assert name in str(err)
    assert value.strip() in str(err)
    assert "expected" in str(err)


def test_redis_source_needs_channels() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({"PLASMA_SUBSCRIBER_TYPE": "redis"})
    assert info.value.name == "PLASMA_SUBSCRIBER_REDIS_CHANNELS"
    with pytest.raises(ConfigError):
        Config.from_env(
            {"PLASMA_SUBSCRIBER_TYPE": "redis", "PLASMA_SUBSCRIBER_REDIS_CHANNELS": ","}
        )


@pytest.mark.parametrize("missing", ["PLASMA_TLS_CERT_FILE", "PLASMA_TLS_KEY_FILE"])
def test_tls_needs_both_files(missing: str) -> None:
    other = ({"PLASMA_TLS_CERT_FILE", "PLASMA_TLS_KEY_FILE"} - {missing}).pop()
    with pytest.raises(ConfigError) as info:
        Config.from_env({other: "/tmp/x.pem"})
    assert info.value.name == missing


def test_misspelt_syslog_network_alias() -> None:
    """The original README spells it PLASMA_METRICS_SYSLOG_NETWORDK; both names work."""
    assert (
        Config.from_env({"PLASMA_METRICS_SYSLOG_NETWORDK": "udp"}).metrics.syslog_network == "udp"
    )
    assert Config.from_env({"PLASMA_METRICS_SYSLOG_NETWORK": "tcp"}).metrics.syslog_network == "tcp"
    both = {"PLASMA_METRICS_SYSLOG_NETWORK": "tcp", "PLASMA_METRICS_SYSLOG_NETWORDK": "udp"}
    assert Config.from_env(both).metrics.syslog_network == "tcp"
    with pytest.raises(ConfigError) as info:
        Config.from_env({"PLASMA_METRICS_SYSLOG_NETWORDK": "ipx"})
    assert info.value.name == "PLASMA_METRICS_SYSLOG_NETWORDK"
    assert "ipx" in str(info.value)


def test_config_is_frozen() -> None:
    c = Config.from_env({})
    with pytest.raises(AttributeError):
        c.port = 1  # type: ignore[misc]


# --- end to end: the plasma command ----------------------------------------------------------


def _plasma(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("PLASMA_")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "plasma", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PLASMA_PORT", "eighty"),
        ("PLASMA_SUBSCRIBER_REDIS_TIMEOUT", "1"),
        ("PLASMA_DEBUG", "yes"),
    ],
)
def test_bad_value_exits_2_with_one_line(name: str, value: str) -> None:
    result = _plasma(env={name: value})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert value in lines[0]
    assert "expected" in lines[0]


@pytest.mark.integration
def test_help_lists_every_setting_with_its_default() -> None:
    result = _plasma("--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for setting in SETTINGS:
        matching = [line for line in lines if setting.name + " " in line + " "]
        assert matching, f"{setting.name} missing from plasma --help"
        default = setting.default or '""'
        assert any(default in line for line in matching), (setting.name, default, matching)


@pytest.mark.integration
def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "plasma"
    if not script.exists():
        pytest.skip("plasma console script not installed in this environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "PLASMA_SUBSCRIBER_REDIS_CHANNELS" in result.stdout
