"""The TensorBoard event file format, read without TensorBoard: `pip install trainpilot` is enough for
`trainpilot watch` and `trainpilot analyze` on any writer's log directory.

A file is TFRecord framing (``uint64 length | uint32 masked crc32c | data | uint32 masked crc32c``,
little-endian) around `Event` protobufs, of which only the fields trainpilot uses are decoded:

    Event        wall_time=1 double, step=2 int64, summary=5 (a oneof with fields 3, 4, 6-9)
    Summary      value=1 Value
    Value        tag=1, metadata=9 {plugin_data=1 {plugin_name=1}}, and one of simple_value=2 float,
                 image=4 {encoded_image_string=4}, histo=5, audio=6, tensor=8 TensorProto
    TensorProto  dtype=1, tensor_shape=2 {dim=2 {size=1}}, tensor_content=4, float_val=5, double_val=6,
                 int_val=7, string_val=8, int64_val=10, bool_val=11, half_val=13

Protobuf's rules apply: the last of a oneof wins, a message field seen twice is merged (decoding the
concatenation of its parts is exactly that), repeated numbers may come packed or not, unknown fields
are skipped. tests/test_eventfile.py checks that this reads what TensorBoard's own reader reads.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

Field = tuple[int, int, int | bytes]  # (number, wire type, varint / fixed bits / bytes)


def _table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _table()


def masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_record(f: BinaryIO) -> bytes | None:
    """The next complete, intact record, or None (end of file, a record still being written, or
    damage) with `f` back where that record starts, so a later call retries it."""
    start = f.tell()
    header = f.read(12)
    if len(header) == 12:
        (length,) = struct.unpack_from("<Q", header)
        if struct.unpack_from("<I", header, 8)[0] == masked_crc32c(header[:8]):
            body = f.read(length + 4)
            if len(body) == length + 4 and struct.unpack_from("<I", body, length)[0] == masked_crc32c(
                body[:length]
            ):
                return body[:length]
    f.seek(start)
    return None


# -- protobuf ---------------------------------------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[Field]:
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = int.from_bytes(data[pos : pos + size], "little"), pos + size
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data) or number == 0:
            raise ValueError("truncated message")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _float(bits: int) -> float:
    value: float = struct.unpack("<f", bits.to_bytes(4, "little"))[0]
    return value


def _double(bits: int) -> float:
    value: float = struct.unpack("<d", bits.to_bytes(8, "little"))[0]
    return value


@dataclass(slots=True)
class Tensor:
    dtype: int = 0
    shape: list[int] = field(default_factory=list)
    content: bytes = b""
    numbers: dict[int, list[int]] = field(default_factory=dict)  # field number -> raw varints/bits
    strings: list[bytes] = field(default_factory=list)

    def scalar(self) -> float | None:
        """The value of a one-element tensor of a real or integer type, else None."""
        if math.prod(self.shape) != 1 or self.dtype not in _FORMATS:
            return None
        if self.content:
            if len(self.content) != struct.calcsize(_FORMATS[self.dtype]):
                return None
            return float(struct.unpack(_FORMATS[self.dtype], self.content)[0])
        values = self.numbers.get(_NUMBER_FIELDS.get(self.dtype, 0), [])
        if len(values) != 1:
            return None
        raw = values[0]
        if self.dtype == DT_FLOAT:
            return _float(raw)
        if self.dtype == DT_DOUBLE:
            return _double(raw)
        if self.dtype == DT_HALF:
            return float(struct.unpack("<e", (raw & 0xFFFF).to_bytes(2, "little"))[0])
        if self.dtype == DT_BOOL:
            return float(raw != 0)
        return float(_signed(raw) if self.dtype in _SIGNED else raw)


DT_FLOAT, DT_DOUBLE, DT_BOOL, DT_HALF = 1, 2, 10, 19
# struct formats of the dtypes read (TensorFlow's types.proto numbers); tensor_content holds these bytes
_FORMATS = {1: "<f", 2: "<d", 3: "<i", 4: "<B", 5: "<h", 6: "<b", 9: "<q", 10: "<?", 17: "<H", 19: "<e"}
_FORMATS |= {22: "<I", 23: "<Q"}  # TensorBoard reads unsigned 32/64-bit ints from tensor_content only
_SIGNED = frozenset({3, 5, 6, 9})
# Without tensor_content, the repeated field holding the value: float_val, double_val, int_val,
# int64_val, bool_val, half_val (the bits of a float16).
_NUMBER_FIELDS = {1: 5, 2: 6, 3: 7, 4: 7, 5: 7, 6: 7, 17: 7, 9: 10, 10: 11, 19: 13}
_FIXED = {5: 5, 6: 1}  # float_val and double_val are fixed32 / fixed64, the other numbers varints


def decode_tensor(data: bytes) -> Tensor:
    tensor = Tensor()
    for number, wire, value in _fields(data):
        if number == 1 and wire == 0:
            tensor.dtype = int(value)
        elif number == 2 and wire == 2:
            tensor.shape += [_dim(bytes(dim)) for n, w, dim in _fields(bytes(value)) if n == 2 and w == 2]
        elif number == 4 and wire == 2:
            tensor.content = bytes(value)
        elif number == 8 and wire == 2:
            tensor.strings.append(bytes(value))
        elif number in (5, 6, 7, 10, 11, 13):
            tensor.numbers.setdefault(number, []).extend(_numbers(wire, value, _FIXED.get(number, 0)))
    return tensor


def _dim(data: bytes) -> int:
    size = 0
    for number, wire, value in _fields(data):
        if number == 1 and wire == 0:
            size = _signed(int(value))
    return size


def _numbers(wire: int, value: int | bytes, expected: int) -> list[int]:
    if wire == expected and isinstance(value, int):
        return [value]
    if wire != 2 or not isinstance(value, bytes):
        return []
    if expected == 0:
        out, pos = [], 0
        while pos < len(value):
            number, pos = _varint(value, pos)
            out.append(number)
        return out
    size = 4 if expected == 5 else 8
    if len(value) % size:
        raise ValueError("packed field of a bad length")
    return [int.from_bytes(value[i : i + size], "little") for i in range(0, len(value), size)]


@dataclass(slots=True)
class Value:
    """One summary value; `kind` is the field number of its oneof member (0: none)."""

    tag: str = ""
    plugin: str = ""
    kind: int = 0
    simple_value: float = 0.0
    payload: bytes = b""  # the image, histo, audio or tensor message, its parts concatenated


SIMPLE_VALUE, IMAGE, HISTO, AUDIO, TENSOR = 2, 4, 5, 6, 8


def decode_value(data: bytes) -> Value:
    value = Value()
    metadata = b""
    for number, wire, item in _fields(data):
        if number == 1 and wire == 2:
            value.tag = bytes(item).decode()
        elif number == 9 and wire == 2:
            metadata += bytes(item)
        elif number == SIMPLE_VALUE and wire == 5:
            value.kind, value.simple_value = SIMPLE_VALUE, _float(int(item))
        elif number in (3, IMAGE, HISTO, AUDIO, TENSOR) and wire == 2:
            value.payload = value.payload + bytes(item) if value.kind == number else bytes(item)
            value.kind = number
    plugin_data = b"".join(bytes(v) for n, w, v in _fields(metadata) if n == 1 and w == 2)
    for number, wire, item in _fields(plugin_data):
        if number == 1 and wire == 2:
            value.plugin = bytes(item).decode()
    return value


@dataclass(slots=True)
class Event:
    wall_time: float = 0.0
    step: int = 0
    values: list[Value] | None = None  # None: the record holds no summary (a graph, a file version...)


def decode_event(data: bytes) -> Event:
    event = Event()
    summary: bytes | None = None
    for number, wire, value in _fields(data):
        if number == 1 and wire == 1:
            event.wall_time = _double(int(value))
        elif number == 2 and wire == 0:
            event.step = _signed(int(value))
        elif number == 5 and wire == 2:
            summary = (summary or b"") + bytes(value)
        elif number in (3, 4, 6, 7, 8, 9) and wire == 2:  # another member of the oneof: no summary
            summary = None
    if summary is not None:
        event.values = [decode_value(bytes(v)) for n, w, v in _fields(summary) if n == 1 and w == 2]
    return event


def image_bytes(data: bytes) -> bytes:
    """The encoded image of a legacy `Image` message."""
    encoded = b""
    for number, wire, value in _fields(data):
        if number == 4 and wire == 2:
            encoded = bytes(value)
    return encoded
