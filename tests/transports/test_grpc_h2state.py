"""The lean h2 connection state behaves as h2's own: settings, HPACK, frame dispatch.

``plasma.transports.grpc.h2state`` swaps h2's per-connection containers for smaller ones; these
tests hold it to h2's behaviour by running both side by side, and by talking to a real h2 client
connection (the end-to-end behaviour with grpcio is in test_grpc.py and the attack tests).
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

from plasma.transports.grpc.h2state import LeanSettings, new_connection

Codes = h2.settings.SettingCodes


def _changes(settings: h2.settings.Settings) -> dict[int, tuple[int | None, int]]:
    return {k: (c.original_value, c.new_value) for k, c in settings.acknowledge().items()}


def test_settings_change_as_h2s_do() -> None:
    initial = {Codes.MAX_CONCURRENT_STREAMS: 7}
    ours = LeanSettings(client=False, initial_values=dict(initial))
    theirs = h2.settings.Settings(client=False, initial_values=dict(initial))
    assert dict(ours) == dict(theirs)
    for settings in (ours, theirs):
        settings[Codes.INITIAL_WINDOW_SIZE] = 1000  # two SETTINGS frames in flight
        settings[Codes.INITIAL_WINDOW_SIZE] = 2000
        settings[Codes.MAX_HEADER_LIST_SIZE] = 300  # a setting not set before
    assert ours.initial_window_size == theirs.initial_window_size == 65535  # not acked yet
    with pytest.raises(KeyError):
        ours[Codes.MAX_HEADER_LIST_SIZE]
    assert ours.max_header_list_size is None
    assert (
        _changes(ours)
        == _changes(theirs)
        == {
            Codes.INITIAL_WINDOW_SIZE: (65535, 1000),
            Codes.MAX_HEADER_LIST_SIZE: (None, 300),
        }
    )
    assert _changes(ours) == _changes(theirs) == {Codes.INITIAL_WINDOW_SIZE: (1000, 2000)}
    assert _changes(ours) == _changes(theirs) == {}
    assert dict(ours) == dict(theirs)
    assert ours.max_header_list_size == 300


@pytest.mark.parametrize(
    ("code", "value"),
    [(Codes.INITIAL_WINDOW_SIZE, 2**31), (Codes.MAX_FRAME_SIZE, 100), (Codes.ENABLE_PUSH, 2)],
)
def test_invalid_settings_are_refused_as_h2_refuses_them(code: Codes, value: int) -> None:
    errors = []
    for settings in (LeanSettings(), h2.settings.Settings()):
        with pytest.raises(h2.exceptions.InvalidSettingsValueError) as caught:
            settings[code] = value
        errors.append(caught.value.error_code)
    assert errors[0] == errors[1]


def test_the_servers_own_settings_are_shared_and_fixed() -> None:
    a, b = new_connection(100, 16384), new_connection(100, 16384)
    assert a.local_settings is b.local_settings
    assert a.remote_settings is not b.remote_settings
    assert a.local_settings.header_table_size == 0
    with pytest.raises(TypeError):
        a.local_settings[Codes.MAX_CONCURRENT_STREAMS] = 5
    assert new_connection(50, 16384).local_settings.max_concurrent_streams == 50


def _exchange(client: h2.connection.H2Connection, server: h2.connection.H2Connection) -> list:
    """Deliver what each side has queued to the other until both are quiet; server events."""
    events: list = []
    while True:
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if not to_server and not to_client:
            return events
        if to_server:
            events += server.receive_data(to_server)
        if to_client:
            client.receive_data(to_client)


def test_a_real_h2_client_talks_to_the_lean_state() -> None:
    server = new_connection(100, 16384)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server.initiate_connection()
    client.initiate_connection()
    events = _exchange(client, server)
    assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events)
    request = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/proto.StreamService/Events"),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"user-agent", b"grpc-python/1.0 " + b"x" * 100),
    ]
    for sid in (1, 3, 5):
        client.send_headers(sid, request)
        client.send_data(sid, b"\x00\x00\x00\x00\x00")
        client.increment_flow_control_window(4096)
        client.ping(b"12345678")
        received = [
            e for e in _exchange(client, server) if isinstance(e, h2.events.RequestReceived)
        ]
        assert [e.headers for e in received] == [request]
        # The client took the server's HEADER_TABLE_SIZE 0: nothing is indexed per connection.
        assert len(server.decoder.header_table.dynamic_entries) == 0
        server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        assert len(server.encoder.header_table.dynamic_entries) == 0
        to_client = server.data_to_send()
        got = client.receive_data(to_client)
        assert [type(e) for e in got if isinstance(e, h2.events.ResponseReceived)]
        assert any(
            isinstance(e, h2.events.TrailersReceived) and e.headers == [(b"grpc-status", b"0")]
            for e in got
        )
    assert server.remote_settings.header_table_size == client.local_settings.header_table_size
