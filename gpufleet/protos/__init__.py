"""KServe v2 gRPC messages (``inference.*``), built from ``kserve_v2.proto`` in a private descriptor pool.

The descriptor is committed (``kserve_v2_descriptor.py``, made by ``generate.py`` with grpcio-tools); this
module turns it into message classes with public protobuf API, so it needs ``protobuf`` only, and a process
that also imports ``tritonclient.grpc`` (same ``inference.*`` names, protobuf's default pool) is fine.

>>> from gpufleet.protos import pb
>>> pb.ServerLiveResponse(live=True).SerializeToString()
b'\\x08\\x01'
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from google.protobuf import descriptor_pool, message_factory

from gpufleet.protos.kserve_v2_descriptor import SERIALIZED

__all__ = ["SERVICE", "pb"]

SERVICE = "inference.GRPCInferenceService"

_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(SERIALIZED)
_file = _pool.FindFileByName("kserve_v2.proto")


def _classes() -> SimpleNamespace:
    out: dict[str, Any] = {name: message_factory.GetMessageClass(desc)
                           for name, desc in _file.message_types_by_name.items()}
    out["DataType"] = _file.enum_types_by_name["DataType"]
    out["methods"] = {m.name: (m.input_type.name, m.output_type.name)
                      for m in _file.services_by_name["GRPCInferenceService"].methods}
    return SimpleNamespace(**out)


pb = _classes()
