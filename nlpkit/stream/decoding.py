"""A message's key and value into a task's fields: JSON, text, or a Schema Registry record.

The value format is ``json`` or ``text`` (see :mod:`nlpkit.stream.messages`), one of the
Schema Registry formats ``avro``, ``protobuf`` and ``jsonschema``, or ``auto``: a value that
starts with the registry's magic byte 0 is decoded through the registry when one is
configured, anything else is JSON or text as before. Registry records are decoded by
confluent-kafka's own registry client and deserializers (Avro, JSON Schema) or, for
Protobuf, with the writer's schema fetched from the registry (Protobuf records carry no
type of their own, and confluent-kafka's deserializer wants a compiled class).

``fields`` maps a task's inputs (and ``id``, ``task``) onto paths in nested records:
``{"text": "review.body"}`` reads the text from ``record["review"]["body"]``. Every failure
is a :class:`~nlpkit.stream.messages.Rejected` with its reason; only a registry that cannot
be reached raises, because that is an outage, not a bad message.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nlpkit import settings
from nlpkit.errors import NlpkitError, error_line
from nlpkit.stream.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_ID_CHARS,
    Decoded,
    Rejected,
    decode_message,
    key_text,
)

VALUE_FORMATS = ("auto", "json", "text", "avro", "protobuf", "jsonschema")
KEY_FORMATS = ("bytes", "avro", "protobuf", "jsonschema")
# nlpkit's format names -> the schema types the registry records.
REGISTRY_TYPES = {"avro": "AVRO", "protobuf": "PROTOBUF", "jsonschema": "JSON"}
MAGIC_BYTE = 0


def registry_client(url: str | None = None) -> Any:
    """The Schema Registry client for ``url`` (default: the ``url`` of the configured registry
    settings), with the configured pass-through settings (authentication, TLS). One client
    per configuration and process, so its schema cache is shared; a ``mock://`` URL gives
    confluent-kafka's in-process registry (real wire format and schema ids, no server)."""
    configured = {key: value for key, (value, _source) in settings.schema_registry_settings().items()}
    if url:
        configured["url"] = url
    if "url" not in configured:
        raise NlpkitError("no Schema Registry configured: pass --schema-registry URL or set NLPKIT_SCHEMA_REGISTRY_URL")
    return _client(tuple(sorted(configured.items())))


def configured_registry(url: str | None = None) -> Any:
    """The registry client when a URL is given or configured, else None (JSON and text only)."""
    if url or "url" in settings.schema_registry_settings():
        return registry_client(url)
    return None


@functools.cache
def _client(configuration: tuple[tuple[str, str], ...]) -> Any:
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError as exc:  # the registry extras are missing
        raise NlpkitError(
            "Schema Registry support needs confluent-kafka's extras: pip install 'confluent-kafka[avro,schemaregistry]'"
        ) from exc
    try:
        return SchemaRegistryClient.new_client(dict(configuration))
    except (ValueError, TypeError) as exc:
        raise NlpkitError(f"Schema Registry settings refused: {exc}") from exc


@dataclass
class MessageDecoder:
    """Decodes messages the way ``nlpkit consume`` was told to (see the module docstring)."""

    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    value_format: str = "auto"
    key_format: str = "bytes"
    fields: Mapping[str, str] = field(default_factory=dict)
    registry: Any = None  # a SchemaRegistryClient; required for the registry formats

    def __post_init__(self) -> None:
        if self.value_format not in VALUE_FORMATS:
            raise NlpkitError(f"value format must be one of {', '.join(VALUE_FORMATS)}, not '{self.value_format}'")
        if self.key_format not in KEY_FORMATS:
            raise NlpkitError(f"key format must be one of {', '.join(KEY_FORMATS)}, not '{self.key_format}'")
        needs_registry = self.value_format in REGISTRY_TYPES or self.key_format in REGISTRY_TYPES
        if needs_registry and self.registry is None:
            raise NlpkitError("the Schema Registry formats need --schema-registry URL (or NLPKIT_SCHEMA_REGISTRY_URL)")
        self._deserializers: dict[str, Any] = {}
        self._protobuf_types: dict[tuple[int, tuple[int, ...]], Any] = {}

    def decode(self, topic: str, value: bytes | None, key: bytes | None) -> Decoded | Rejected:
        record_id = self._key_id(topic, key)
        if isinstance(record_id, Rejected):
            return record_id
        if not self._from_registry(value):
            decoded = decode_message(value, key if self.key_format == "bytes" else None, self.max_bytes)
            if isinstance(decoded, Rejected):
                return decoded
            return self._mapped(decoded.fields, decoded.record_id or record_id, None)
        if len(value) > self.max_bytes:
            return Rejected(f"message is {len(value)} bytes, over the limit of {self.max_bytes}")
        record = self._registry_record(topic, value, "value", self.value_format)
        if isinstance(record, Rejected):
            return record
        payload, schema_id = record
        if not isinstance(payload, Mapping):
            payload = {"text": payload}  # a schema of a plain string: the text itself
        return self._mapped(payload, record_id, schema_id)

    def _from_registry(self, value: bytes | None) -> bool:
        if self.value_format in REGISTRY_TYPES:
            return True
        return (
            self.value_format == "auto"
            and self.registry is not None
            and value is not None
            and len(value) > 5
            and value[0] == MAGIC_BYTE
        )

    def _key_id(self, topic: str, key: bytes | None) -> str | None | Rejected:
        """The record id a key gives: its text (``bytes`` keys), or its decoded registry record."""
        if self.key_format == "bytes" or key is None:
            text = key_text(key)
            return text if text is not None and len(text) <= MAX_ID_CHARS else None
        record = self._registry_record(topic, key, "key", self.key_format)
        if isinstance(record, Rejected):
            return Rejected(f"key: {record.reason}")
        decoded, _schema_id = record
        text = decoded if isinstance(decoded, str) else json.dumps(decoded, sort_keys=True, default=str)
        return text if len(text) <= MAX_ID_CHARS else None

    def _registry_record(self, topic: str, data: bytes, part: str, wanted: str) -> tuple[Any, int] | Rejected:
        from confluent_kafka.schema_registry import MessageField, SchemaRegistryError, SerializationContext

        if len(data) < 5 or data[0] != MAGIC_BYTE:
            return Rejected(f"not a Schema Registry record (it must start with byte 0 and a schema id; {wanted} asked)")
        schema_id = int.from_bytes(data[1:5], "big")
        try:
            schema = self.registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return Rejected(f"unknown schema id {schema_id}")
            raise NlpkitError(f"Schema Registry error for schema id {schema_id}: {error_line(exc)}") from exc
        kind = schema.schema_type or "AVRO"
        if wanted in REGISTRY_TYPES and REGISTRY_TYPES[wanted] != kind:
            return Rejected(f"schema id {schema_id} is {kind}, not {wanted}")
        context = SerializationContext(topic, MessageField.KEY if part == "key" else MessageField.VALUE)
        try:
            return self._deserialize(kind, data, context, schema_id), schema_id
        except Exception as exc:  # whatever the deserializer found wrong with these bytes
            return Rejected(f"undecodable {kind} record (schema id {schema_id}): {error_line(exc)}")

    def _deserialize(self, kind: str, data: bytes, context: Any, schema_id: int) -> Any:
        if kind == "PROTOBUF":
            return self._protobuf(data, schema_id)
        if kind not in self._deserializers:
            if kind == "AVRO":
                from confluent_kafka.schema_registry.avro import AvroDeserializer

                self._deserializers[kind] = AvroDeserializer(self.registry)
            else:
                from confluent_kafka.schema_registry.json_schema import JSONDeserializer

                self._deserializers[kind] = JSONDeserializer(None, schema_registry_client=self.registry)
        return self._deserializers[kind](data, context)

    def _protobuf(self, data: bytes, schema_id: int) -> dict[str, Any]:
        """A Protobuf record as a dict, its message type built from the writer's schema."""
        from google.protobuf.json_format import MessageToDict
        from google.protobuf.message_factory import GetMessageClass

        indexes, offset = _message_indexes(data, 5)
        wanted = (schema_id, tuple(indexes))
        if wanted not in self._protobuf_types:
            self._protobuf_types[wanted] = GetMessageClass(self._protobuf_descriptor(schema_id, tuple(indexes)))
        message_class = self._protobuf_types[wanted]
        message = message_class()
        message.ParseFromString(data[offset:])
        return MessageToDict(message, preserving_proto_field_name=True)

    def _protobuf_descriptor(self, schema_id: int, indexes: tuple[int, ...]) -> Any:
        from google.protobuf import descriptor_pb2, descriptor_pool

        schema = self.registry.get_schema(schema_id, fmt="serialized")
        if schema.references:
            raise NlpkitError(f"Protobuf schema id {schema_id} references other schemas, which nlpkit cannot load")
        file_proto = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(schema.schema_str))
        pool = descriptor_pool.DescriptorPool()
        for dependency in file_proto.dependency:  # the well-known types (timestamps and the like)
            known = descriptor_pool.Default().FindFileByName(dependency)
            pool.AddSerializedFile(known.serialized_pb)
        pool.AddSerializedFile(file_proto.SerializeToString())
        described = pool.FindFileByName(file_proto.name)
        message = described.message_types_by_name[file_proto.message_type[indexes[0]].name]
        for index in indexes[1:]:
            message = message.nested_types[index]
        return message

    def _mapped(self, payload: Mapping[str, Any], record_id: str | None, schema_id: int | None) -> Decoded | Rejected:
        """The task's fields from ``payload`` through the field map; ``id`` and ``task`` too."""
        fields = dict(payload)
        for name, path in self.fields.items():
            found = _at_path(payload, path)
            if found is _MISSING:
                return Rejected(f"missing field '{path}'", stage="validate")
            fields[name] = found
        task = fields.get("task")
        if task is not None and not isinstance(task, str):
            return Rejected("field 'task' must be a string")
        if fields.get("id") is not None:
            record_id = str(fields["id"])
            if len(record_id) > MAX_ID_CHARS:
                return Rejected(f"field 'id' is longer than {MAX_ID_CHARS} characters")
        return Decoded(fields, record_id, task, schema_id)


_MISSING = object()


def _at_path(payload: Mapping[str, Any], path: str) -> Any:
    found: Any = payload
    for step in path.split("."):
        if not isinstance(found, Mapping) or step not in found:
            return _MISSING
        found = found[step]
    return found


def _message_indexes(data: bytes, offset: int) -> tuple[list[int], int]:
    """The Confluent Protobuf framing after the schema id: zig-zag varints, a count then the
    indexes of the message in the schema's file (a lone 0 means the first message)."""

    def varint(at: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[at]
            value |= (byte & 0x7F) << shift
            at += 1
            if not byte & 0x80:
                return (value >> 1) ^ -(value & 1), at
            shift += 7

    count, offset = varint(offset)
    if count == 0:
        return [0], offset
    indexes = []
    for _ in range(count):
        index, offset = varint(offset)
        indexes.append(index)
    return indexes, offset


def parse_field_map(items: Mapping[str, str]) -> dict[str, str]:
    """``--field NAME=PATH`` options, checked: a dotted path of non-empty names."""
    for name, path in items.items():
        if not path or any(not step for step in path.split(".")):
            raise NlpkitError(f"--field {name}={path}: the path must be dotted names, such as review.body")
    return dict(items)
