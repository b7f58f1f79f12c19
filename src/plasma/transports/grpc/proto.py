"""The protobuf messages of plasma's gRPC services, loaded from checked-in descriptor sets.

``scripts/gen-proto`` compiles each ``.proto`` beside this module into ``_proto/<name>.binpb``
(a serialized ``FileDescriptorSet``). Each file is loaded on first use, not at import
(``GrpcTransport`` loads them all when it is made, so no client waits), into its own private
descriptor pool, not protobuf's default one: ``stream.proto`` and ``stream_v2.proto`` both
declare ``proto.Request``, and a process that also imports grpcio's own health or reflection modules
(the tests do) would otherwise fail with "duplicate symbol". Descriptor sets also work with
every protobuf runtime version, where generated ``_pb2.py`` files demand a runtime at least as
new as the compiler. The classes are protobuf's usual (upb) message classes.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor

__all__ = ["ProtoFile", "get", "load", "load_all", "served_files"]


@dataclass(frozen=True, slots=True)
class ProtoFile:
    """One compiled ``.proto``: its descriptor, serialized form, and message classes by name."""

    name: str
    descriptor: FileDescriptor
    serialized: bytes
    messages: dict[str, Any]
    symbols: frozenset[str]
    """Full names of its services, methods, messages and enums (what reflection looks up)."""

    def message(self, name: str) -> Any:
        """The message class of ``name`` (a full name such as ``proto.Request``)."""
        return self.messages[name]


def load(name: str) -> ProtoFile:
    """Load ``_proto/<name>.binpb`` into a fresh descriptor pool."""
    raw = importlib.resources.files(__package__ or "plasma.transports.grpc").joinpath(
        f"_proto/{name}.binpb"
    )
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(raw.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in descriptor_set.file:
        pool.Add(file_proto)
    top = descriptor_set.file[-1]
    file = pool.FindFileByName(top.name)
    messages: dict[str, Any] = {}
    symbols = {e.full_name for e in file.enum_types_by_name.values()}
    for service in file.services_by_name.values():
        symbols.add(service.full_name)
        symbols.update(method.full_name for method in service.methods)

    def collect(descriptors: Any) -> None:
        for d in descriptors:
            messages[d.full_name] = message_factory.GetMessageClass(d)
            symbols.add(d.full_name)
            symbols.update(e.full_name for e in d.enum_types)
            collect(d.nested_types)

    collect(file.message_types_by_name.values())
    return ProtoFile(top.name, file, top.SerializeToString(), messages, frozenset(symbols))


@functools.cache
def get(name: str) -> ProtoFile:
    """``_proto/<name>.binpb``, loaded on first use: ``stream`` (2017), ``stream_v2`` (adds
    ``forceClose``), ``health``, ``reflection_v1``, ``reflection_v1alpha``."""
    return load(name)


def served_files() -> tuple[ProtoFile, ...]:
    """What server reflection describes: the 2017 ``stream.proto`` and the standard extras."""
    return tuple(get(name) for name in ("stream", "health", "reflection_v1", "reflection_v1alpha"))


def load_all() -> None:
    """Load every file now (at server start), so the first call of each kind does not wait."""
    served_files()
    get("stream_v2")
