"""The Sparkplug B payload schema, built at import from the specification's field numbers
with Google's ``protobuf`` runtime, and the encoding of the agent's metrics.

The schema is declared here as a ``FileDescriptorProto`` rather than compiled from a .proto
file: no protoc step, and no generated module tied to one protobuf release (a Pi's distro
protobuf and a workstation's differ). Only the messages the agent writes and reads are
declared (Payload, Metric, PropertySet, PropertyValue); a host's other fields (DataSet,
Template) are skipped by protobuf as unknown fields.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

NAMESPACE = "spBv1.0"
PACKAGE = "org.eclipse.tahu.protobuf"


class DataType(IntEnum):
    """Sparkplug B data types (specification 3.0, section 6.4.16)."""
    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14


# metric / property value field for each data type (the ``oneof value`` of the schema)
VALUE_FIELD = {DataType.Int8: "int_value", DataType.Int16: "int_value",
               DataType.Int32: "int_value", DataType.UInt8: "int_value",
               DataType.UInt16: "int_value", DataType.UInt32: "int_value",
               DataType.Int64: "long_value", DataType.UInt64: "long_value",
               DataType.DateTime: "long_value", DataType.Float: "float_value",
               DataType.Double: "double_value", DataType.Boolean: "boolean_value",
               DataType.String: "string_value", DataType.Text: "string_value"}

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64, "float": _F.TYPE_FLOAT,
          "double": _F.TYPE_DOUBLE, "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING,
          "bytes": _F.TYPE_BYTES}

# (name, number, type, label, oneof index or None) per message; message types by name
_MESSAGES: dict[str, list[tuple[str, int, str, str, int | None]]] = {
    "Payload": [("timestamp", 1, "uint64", "optional", None),
                ("metrics", 2, "Payload.Metric", "repeated", None),
                ("seq", 3, "uint64", "optional", None),
                ("uuid", 4, "string", "optional", None),
                ("body", 5, "bytes", "optional", None)],
    "Payload.PropertyValue": [("type", 1, "uint32", "optional", None),
                              ("is_null", 2, "bool", "optional", None),
                              ("int_value", 3, "uint32", "optional", 0),
                              ("long_value", 4, "uint64", "optional", 0),
                              ("float_value", 5, "float", "optional", 0),
                              ("double_value", 6, "double", "optional", 0),
                              ("boolean_value", 7, "bool", "optional", 0),
                              ("string_value", 8, "string", "optional", 0),
                              ("propertyset_value", 9, "Payload.PropertySet", "optional", 0)],
    "Payload.PropertySet": [("keys", 1, "string", "repeated", None),
                            ("values", 2, "Payload.PropertyValue", "repeated", None)],
    "Payload.Metric": [("name", 1, "string", "optional", None),
                       ("alias", 2, "uint64", "optional", None),
                       ("timestamp", 3, "uint64", "optional", None),
                       ("datatype", 4, "uint32", "optional", None),
                       ("is_historical", 5, "bool", "optional", None),
                       ("is_transient", 6, "bool", "optional", None),
                       ("is_null", 7, "bool", "optional", None),
                       ("properties", 9, "Payload.PropertySet", "optional", None),
                       ("int_value", 10, "uint32", "optional", 0),
                       ("long_value", 11, "uint64", "optional", 0),
                       ("float_value", 12, "float", "optional", 0),
                       ("double_value", 13, "double", "optional", 0),
                       ("boolean_value", 14, "bool", "optional", 0),
                       ("string_value", 15, "string", "optional", 0),
                       ("bytes_value", 16, "bytes", "optional", 0)],
}


def _build():
    f = descriptor_pb2.FileDescriptorProto(name="harken_sparkplug_b.proto", package=PACKAGE,
                                           syntax="proto2")
    top = f.message_type.add(name="Payload")
    nested = {"Payload": top}
    for name in ("PropertyValue", "PropertySet", "Metric"):
        nested[f"Payload.{name}"] = top.nested_type.add(name=name)
    for name, fields in _MESSAGES.items():
        msg = nested[name]
        if any(o is not None for *_, o in fields):
            msg.oneof_decl.add(name="value")
        for fname, number, ftype, label, oneof in fields:
            field = msg.field.add(name=fname, number=number,
                                  label=_F.LABEL_REPEATED if label == "repeated"
                                  else _F.LABEL_OPTIONAL)
            if ftype in _TYPES:
                field.type = _TYPES[ftype]
            else:
                field.type, field.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{ftype}"
            if oneof is not None:
                field.oneof_index = oneof
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.Payload"))


Payload = _build()


def add_metric(payload, name: str, datatype: DataType, value: Any, timestamp_ms: int,
               historical: bool = False, properties: dict[str, tuple[DataType, Any]] | None = None,
               ) -> None:
    """Append one metric; ``value`` None is sent as a null of its type."""
    m = payload.metrics.add(name=name, datatype=int(datatype), timestamp=timestamp_ms)
    if historical:
        m.is_historical = True
    if value is None:
        m.is_null = True
    else:
        setattr(m, VALUE_FIELD[datatype], value)
    for key, (ptype, pvalue) in (properties or {}).items():
        m.properties.keys.append(key)
        v = m.properties.values.add(type=int(ptype))
        setattr(v, VALUE_FIELD[ptype], pvalue)


def metric_value(metric) -> Any:
    """A decoded metric's value (None when null)."""
    if metric.is_null:
        return None
    field = metric.WhichOneof("value")
    return getattr(metric, field) if field else None


def decode(data: bytes):
    """A Sparkplug B payload from its bytes (ValueError when it is not one)."""
    from google.protobuf.message import DecodeError
    p = Payload()
    try:
        p.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a Sparkplug B payload ({exc})") from None
    return p


def topic(group: str, kind: str, edge_node: str, device: str | None = None) -> str:
    """``spBv1.0/<group>/<kind>/<edge node>[/<device>]`` (NBIRTH, DDATA, NCMD, ...)."""
    return "/".join([NAMESPACE, group, kind, edge_node] + ([device] if device else []))


def parse_topic(name: str) -> tuple[str, str, str, str | None] | None:
    """(group, kind, edge node, device or None) of a Sparkplug topic; None otherwise."""
    parts = name.split("/")
    if len(parts) in (4, 5) and parts[0] == NAMESPACE and parts[1] != "STATE":
        return parts[1], parts[2], parts[3], parts[4] if len(parts) == 5 else None
    return None
