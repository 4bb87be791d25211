"""JSON records checked against their declaration: the machinery of src/records.py.

A `Record` is a dataclass read from JSON by `from_json`, which checks every key against
the declaration (the field's type hint): a missing key (a field without a default), a key
the record does not declare, or a value of another type is a `RecordError` whose one line
names the file and the field. `parse_value` checks one value against a type (str, int,
float, bool, None, lists, string-keyed dicts, records, unions of them); the flags' presets
are checked by it too (src/arguments.py). `json_key` declares a field written under a key
Python does not allow as a name, `optional` one left out of the JSON while None.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, field
from functools import cache
from typing import Any, Union

from src.errors import IntegrityError
from src.experiment_io import read_json

JSON_KEY, OMIT_NONE = "json_key", "omit_none"


class RecordError(IntegrityError):
    """A record that does not match its declaration; the message names the file and field."""


def json_key(name: str, default: Any = MISSING) -> Any:
    """A field written under another JSON key (one Python does not allow as a name)."""
    return field(default=default, metadata={JSON_KEY: name})


def optional() -> Any:
    """A key that may be absent (None), and is left out of the JSON while None."""
    return field(default=None, metadata={OMIT_NONE: True})


def _key(item: dataclasses.Field) -> str:
    return item.metadata.get(JSON_KEY, item.name)


def where_of(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _required(item: dataclasses.Field) -> bool:
    return item.default is MISSING and item.default_factory is MISSING


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return "object" if issubclass(tp, Record) else tp.__name__
    return str(tp).replace("typing.", "")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Record:
    """A JSON object with declared keys (a dataclass subclass of this)."""

    @classmethod
    def from_json(cls, data: object, source: str = "record", where: str = ""):
        """`data` checked against the declaration (`source`: the file, for the message)."""
        return _parse_record(cls, data, source, where)

    @classmethod
    def read(cls, path) -> Record:
        return cls.from_json(read_json(path), str(path))

    def to_json(self) -> dict:
        out = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.init and not (value is None and item.metadata.get(OMIT_NONE)):
                out[_key(item)] = dump(value)
        return out


def dump(value: object) -> object:
    """A value as JSON: records by their keys, containers element by element."""
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value


def record_error(source: str, where: str, message: str) -> RecordError:
    return RecordError(f"{source}: {where or 'top level'}: {message}")


def _parse_record(cls: type, data: object, source: str, where: str):
    if not isinstance(data, dict):
        raise record_error(source, where, f"expected an object, got {type(data).__name__} {_show(data)}")
    declared = {_key(item): item for item in dataclasses.fields(cls) if item.init}
    unknown = [key for key in data if key not in declared]
    if unknown:
        raise record_error(source, where_of(where, unknown[0]), "unknown key" + (
            f" (also {', '.join(map(str, unknown[1:]))})" if len(unknown) > 1 else ""))  # fmt: skip
    hints, values = _hints(cls), {}
    for key, item in declared.items():
        if key not in data:
            if _required(item):
                raise record_error(source, where_of(where, key), "missing")
            continue
        values[item.name] = parse_value(hints[item.name], data[key], source, where_of(where, key))
    return cls(**values)


def _record_members(members: tuple) -> list[type]:
    return [m for m in members if isinstance(m, type) and issubclass(m, Record)]


def parse_value(tp: Any, value: object, source: str, where: str) -> object:
    """`value` checked against the type `tp` (records parsed into their classes)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin in (Union, types.UnionType):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        others = [m for m in members if m is not type(None)]
        records = _record_members(others)
        if isinstance(value, dict) and records:
            # the record whose required keys the object has (else the first, for its message)
            fitting = [r for r in records if all(
                _key(f) in value for f in dataclasses.fields(r) if f.init and _required(f))]  # fmt: skip
            if fitting:
                return _parse_record(fitting[0], value, source, where)
            for member in (m for m in others if m not in records):
                try:
                    return parse_value(member, value, source, where)
                except RecordError:
                    continue
            return _parse_record(records[0], value, source, where)  # its error names the field
        for member in others:
            try:
                return parse_value(member, value, source, where)
            except RecordError:
                continue
        expected = " or ".join(_type_name(m) for m in members)
        raise record_error(source, where, f"expected {expected}, got {type(value).__name__} {_show(value)}")
    if isinstance(tp, type) and issubclass(tp, Record):
        return _parse_record(tp, value, source, where)
    if origin is list:
        if not isinstance(value, list):
            raise record_error(source, where, f"expected a list, got {type(value).__name__} {_show(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [parse_value(item, v, source, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise record_error(source, where, f"expected an object, got {type(value).__name__} {_show(value)}")
        _, item = typing.get_args(tp) or (str, Any)
        return {k: parse_value(item, v, source, where_of(where, k)) for k, v in value.items()}
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is type(None):
        ok = value is None
    elif isinstance(tp, type):
        ok = isinstance(value, tp)
    else:
        raise TypeError(f"records cannot check {tp!r}")
    if not ok:
        raise record_error(source, where, f"expected {_type_name(tp)}, got {type(value).__name__} {_show(value)}")
    return value
