"""A leaner ``h2`` connection state: what one idle HTTP/2 connection keeps in memory.

An idle gRPC stream is mostly its connection's ``h2`` state, and most of that was containers
sized for work that never comes: every HTTP/2 setting in its own ``collections.deque`` (760
bytes each, a dozen or more per connection), one deque per HPACK table, a dict of a dozen bound
methods, a configuration object per connection. The same behaviour fits in much less:

- settings are one dict of values (and a second one only while a SETTINGS frame is in flight);
- the HPACK tables keep their entries in a list, and neither grows: plasma advertises
  ``SETTINGS_HEADER_TABLE_SIZE`` 0, so clients stop indexing the headers they send once they
  have the server's SETTINGS (grpcio waits for them before its first call), and the encoder
  indexes nothing of its own (a connection sends the same few short headers per call);
- frame handlers are looked up by name when a frame arrives instead of kept bound per
  connection (frames in are rare next to the DATA frames out);
- one ``H2Configuration`` and one set of the server's own settings serve every connection
  (h2 only reads them: plasma never changes its settings after the preface).

h2 still runs the protocol: its state machines, flow control and validation are untouched;
only their containers change. docs/benchmarks.md ("gRPC memory per stream") has the figures.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
import hyperframe.frame

__all__ = ["LeanH2Connection", "LeanSettings", "new_connection"]


class _Entries(list[tuple[bytes, bytes]]):
    """An HPACK dynamic table's entries, newest first (a deque's job, smaller)."""

    __slots__ = ()

    def appendleft(self, entry: tuple[bytes, bytes]) -> None:
        self.insert(0, entry)


class LeanSettings(h2.settings.Settings):
    """``h2.settings.Settings`` as one dict of current values. Values set but not acknowledged
    yet (a SETTINGS frame in flight) wait in a second dict, made only while there are some;
    h2 keeps a deque per setting for this."""

    def __init__(
        self, client: bool = True, initial_values: dict[h2.settings.SettingCodes, int] | None = None
    ) -> None:
        super().__init__(client=client, initial_values=initial_values)  # defaults, validation
        self._settings = cast(Any, {key: values[0] for key, values in self._settings.items()})
        self._pending: dict[h2.settings.SettingCodes | int, list[int]] | None = None

    def __getitem__(self, key: h2.settings.SettingCodes | int) -> int:
        return self._settings[key]  # type: ignore[return-value]  # KeyError until acknowledged

    def __setitem__(self, key: h2.settings.SettingCodes | int, value: int) -> None:
        invalid = h2.settings._validate_setting(key, value)
        if invalid:
            raise h2.exceptions.InvalidSettingsValueError(
                f"Setting {key} has invalid value {value}", error_code=invalid
            )
        if self._pending is None:
            self._pending = {}
        self._pending.setdefault(key, []).append(value)

    def acknowledge(self) -> dict[h2.settings.SettingCodes | int, h2.settings.ChangedSetting]:
        """Apply the oldest value waiting for each setting (one SETTINGS frame's worth)."""
        changed: dict[h2.settings.SettingCodes | int, h2.settings.ChangedSetting] = {}
        pending = self._pending
        if not pending:
            return changed
        current = cast(dict[h2.settings.SettingCodes | int, int], self._settings)
        for key, values in list(pending.items()):
            new = values.pop(0)
            changed[key] = h2.settings.ChangedSetting(key, current.get(key), new)
            current[key] = new
            if not values:
                del pending[key]
        if not pending:
            self._pending = None
        return changed

    def __delitem__(self, key: h2.settings.SettingCodes | int) -> None:
        del self._settings[key]
        if self._pending is not None:
            self._pending.pop(key, None)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LeanSettings):
            return bool(self._settings == other._settings and self._pending == other._pending)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


_FRAME_HANDLERS: dict[type[hyperframe.frame.Frame], str] = {
    hyperframe.frame.HeadersFrame: "_receive_headers_frame",
    hyperframe.frame.PushPromiseFrame: "_receive_push_promise_frame",
    hyperframe.frame.SettingsFrame: "_receive_settings_frame",
    hyperframe.frame.DataFrame: "_receive_data_frame",
    hyperframe.frame.WindowUpdateFrame: "_receive_window_update_frame",
    hyperframe.frame.PingFrame: "_receive_ping_frame",
    hyperframe.frame.RstStreamFrame: "_receive_rst_stream_frame",
    hyperframe.frame.PriorityFrame: "_receive_priority_frame",
    hyperframe.frame.GoAwayFrame: "_receive_goaway_frame",
    hyperframe.frame.ContinuationFrame: "_receive_naked_continuation",
    hyperframe.frame.AltSvcFrame: "_receive_alt_svc_frame",
    hyperframe.frame.ExtensionFrame: "_receive_unknown_frame",
}
"""h2's own dispatch table, by method name (h2 builds it per connection, bound)."""


class _Dispatch:
    """The handler of a frame type, bound when asked for (all h2 asks of its table)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: h2.connection.H2Connection) -> None:
        self._conn = conn

    def __getitem__(self, frame_type: type) -> Any:
        return getattr(self._conn, _FRAME_HANDLERS[frame_type])


class LeanH2Connection(h2.connection.H2Connection):
    """An ``H2Connection`` whose per-connection containers are small (see the module doc)."""

    @property  # type: ignore[override]
    def _frame_dispatch_table(self) -> _Dispatch:
        return _Dispatch(self)

    @_frame_dispatch_table.setter
    def _frame_dispatch_table(self, _table: object) -> None:
        pass  # h2's __init__ builds its bound table: not kept

    def __init__(self, config: h2.config.H2Configuration, settings: LeanSettings) -> None:
        super().__init__(config)
        self.local_settings = settings
        self.remote_settings = LeanSettings(client=not config.client_side)
        for table in (self.encoder.header_table, self.decoder.header_table):
            table.dynamic_entries = cast(Any, _Entries())
        self.encoder.header_table_size = 0  # literal headers: nothing indexed per connection

    def _acknowledge_settings(self) -> list[hyperframe.frame.Frame]:
        frames = super()._acknowledge_settings()
        if self.encoder.header_table_size:  # the client's HEADER_TABLE_SIZE is a maximum:
            self.encoder.header_table_size = 0  # the encoder still indexes nothing
        return frames


class _FixedSettings(LeanSettings):
    """The server's own settings, shared by every connection: sent once in the preface and
    never changed (plasma does not call ``update_settings``), so each acknowledgement
    applies nothing."""

    def __setitem__(self, key: h2.settings.SettingCodes | int, value: int) -> None:
        raise TypeError("the server's HTTP/2 settings are shared and fixed")

    def __delitem__(self, key: h2.settings.SettingCodes | int) -> None:
        raise TypeError("the server's HTTP/2 settings are shared and fixed")


@functools.cache
def _config() -> h2.config.H2Configuration:
    return h2.config.H2Configuration(client_side=False, header_encoding=None)


@functools.cache
def _local_settings(max_streams: int, max_frame_size: int) -> _FixedSettings:
    codes = h2.settings.SettingCodes
    return _FixedSettings(
        client=False,
        initial_values={
            codes.MAX_CONCURRENT_STREAMS: max_streams,
            codes.MAX_FRAME_SIZE: max_frame_size,
            codes.HEADER_TABLE_SIZE: 0,
        },
    )


def new_connection(max_streams: int, max_frame_size: int) -> LeanH2Connection:
    """A server-side connection state advertising these limits and an empty HPACK table."""
    return LeanH2Connection(_config(), _local_settings(max_streams, max_frame_size))
