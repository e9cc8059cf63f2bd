"""One declaration per field of azure-cni's wire forms: the CRDs' objects and the settings file.

A dataclass field declares in its ``metadata`` (:func:`wire`) its JSON name (the attribute's
name in camelCase when not given), its description and its validation; its annotation gives
its type. From that one declaration come :func:`decode` (typed errors naming the field's
path), :func:`encode`, :func:`problems` (the same bounds, for values built in code) and the
CRDs' OpenAPI schemas (``api/openapi.py``).

Types: ``str``, ``int``, ``float``, ``bool``, a ``StrEnum``, ``datetime`` (RFC 3339), ``X |
None``, ``tuple[X, ...]``, ``frozenset[X]``, ``Mapping[str, X]``, ``Any`` (taken as it is)
and nested dataclasses. A value ``None`` (JSON null) or absent takes the field's default; a
field without a default is required. ``decode`` ignores keys it does not know (objects from
the API server: a newer writer may add fields) unless told to refuse them (the settings file).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from azure_cni.api.timestamps import parse_time, rfc3339

#: the ``metadata`` key under which a field keeps its :class:`Wire` declaration
WIRE = "azure-cni/wire"


class WireError(ValueError):
    """A value that does not fit its declaration; the message names the field's path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path

    @classmethod
    def invalid(cls, path: str, raw: Any, reason: str) -> WireError:
        return cls(path, f"{path}: {raw!r} is not valid: {reason}")


@dataclass(frozen=True)
class Rule:
    """A CEL rule the API server checks (one ``x-kubernetes-validations`` entry)."""

    rule: str
    message: str
    #: on an object's rule: the field the API server names when it refuses
    field_path: str = ""

    def document(self) -> dict[str, str]:
        out = {"rule": self.rule}
        if self.field_path:
            out["fieldPath"] = self.field_path
        out["message"] = self.message
        return out


@dataclass(frozen=True)
class Limit:
    """A bound checked by a CEL rule on the enclosing object, so that the API server's refusal
    says why (its ``minimum``/``maximum`` messages cannot): ``op`` is ``>=`` or ``<=``,
    ``value`` a number or another field's JSON name."""

    op: Literal[">=", "<="]
    value: int | str
    why: str = ""


def at_least(value: int, why: str = "") -> Limit:
    return Limit(">=", value, why)


def at_most(value: int, why: str = "") -> Limit:
    return Limit("<=", value, why)


def not_above(other: str) -> Limit:
    """At most the value of the field ``other`` (its JSON name) of the same object."""
    return Limit("<=", other)


class Codec(Protocol):
    """A field whose wire form is not its Python type's (a condition's "True"/"False")."""

    schema: Mapping[str, Any]

    def decode(self, raw: Any) -> Any:
        """The Python value; raises ValueError or TypeError with the reason."""

    def encode(self, value: Any) -> Any: ...


@dataclass(frozen=True)
class Wire:
    """How one field appears on the wire (see :func:`wire` for what each part does)."""

    name: str = ""
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    #: an OpenAPI string format for a ``str`` field (``date-time``)
    format: str = ""
    #: listed in the object schema's ``required`` (the API server refuses an object without it)
    required: bool = False
    #: the schema carries the Python default, which the API server fills in
    default_in_schema: bool = False
    #: encode leaves the field out when it is empty (``""``, ``0``, ``False``, ``()``)
    omit_empty: bool = False
    #: an array's ``x-kubernetes-list-type`` (default: ``set`` for a frozenset, else ``atomic``)
    list_type: str = ""
    map_keys: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    #: the message of a ``self == oldSelf`` rule: the field cannot change once set
    immutable: str = ""
    limits: tuple[Limit, ...] = ()
    #: which writer of a status renders the field (``encode(..., owner=...)``)
    owner: str = ""
    #: the schema lists no enum: other writers' values are valid on the wire
    open_enum: bool = False
    #: an enum field's value for one this code does not know
    fallback: Any = None
    #: a list's items that cannot be decoded are left out (other writers' entries)
    drop_invalid: bool = False
    codec: Codec | None = None


def wire(name: str = "", description: str = "", **declared: Any) -> dict[str, Wire]:
    """A field's ``metadata``: ``field(default=0, metadata=wire("minIPs", "Floor ..."))``."""
    return {WIRE: Wire(name, description, **declared)}


@dataclass(frozen=True)
class Derived:
    """A property on the wire computed from the fields (``status.allocated``): encoded and
    in the schema, never decoded. A class lists them in ``WIRE_DERIVED``."""

    attribute: str
    kind: type
    wire: Wire


#: the class attributes a wire dataclass may set: its derived properties, its CEL rules, and
#: the JSON names of fields (a base class's) it leaves off the wire
DERIVED_ATTRIBUTE = "WIRE_DERIVED"
RULES_ATTRIBUTE = "WIRE_RULES"
EXCLUDE_ATTRIBUTE = "WIRE_EXCLUDE"


def json_name(attribute: str) -> str:
    head, *rest = attribute.split("_")
    return head + "".join(p.capitalize() for p in rest)


#: reads ``raw``, the value at ``key`` (a name, or an index in a list) of the object at
#: ``parent``: the path is spelled only for an error, not for every value read
Decoder = Callable[[Any, str, "str | int"], Any]
Encoder = Callable[[Any], Any]


@dataclass(frozen=True)
class Slot:
    """One field as the codec and the schema see it."""

    attribute: str
    key: str
    type: Any
    wire: Wire
    has_default: bool
    default: Any
    encode: Encoder


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


#: what ``slots``, ``_readers`` and ``_writers`` worked out, per class (classes are few and
#: live forever)
_SLOTS: dict[type, tuple[Slot, ...]] = {}
_READERS: dict[tuple[type, str], tuple[tuple[str, str, bool, Decoder], ...]] = {}
_WRITERS: dict[type, tuple[tuple[str, str, str, bool, Encoder], ...]] = {}


def slots(cls: type) -> tuple[Slot, ...]:
    """Every field of ``cls`` with its key, type and encoder (worked out once per class)."""
    known = _SLOTS.get(cls)
    if known is None:
        known = _SLOTS[cls] = _slots(cls)
    return known


def _slots(cls: type) -> tuple[Slot, ...]:
    hints = typing.get_type_hints(cls)
    excluded = getattr(cls, EXCLUDE_ATTRIBUTE, ())
    out = []
    for f in dataclasses.fields(cls):
        declared = f.metadata.get(WIRE) or Wire()
        if (declared.name or json_name(f.name)) in excluded:
            continue
        default = _default(f)
        out.append(Slot(f.name, declared.name or json_name(f.name), hints[f.name], declared,
                        default is not dataclasses.MISSING, default,
                        _encoder(hints[f.name], declared)))
    return tuple(out)


Unknown = Literal["ignore", "refuse"]


def _readers(cls: type, unknown: Unknown) -> tuple[tuple[str, str, bool, Decoder], ...]:
    """(attribute, key, has a default, reader) of each field of ``cls`` (nested objects
    read with the same ``unknown``)."""
    known = _READERS.get((cls, unknown))
    if known is None:
        known = _READERS[cls, unknown] = tuple(
            (s.attribute, s.key, s.has_default, _decoder(s.type, s.wire, unknown))
            for s in slots(cls))
    return known


def _writers(cls: type) -> tuple[tuple[str, str, str, bool, Encoder], ...]:
    """(key, attribute, owner, omitted when empty, writer) of each field and derived
    property of ``cls``."""
    known = _WRITERS.get(cls)
    if known is None:
        known = _WRITERS[cls] = (
            *((s.key, s.attribute, s.wire.owner, s.wire.omit_empty, s.encode)
              for s in slots(cls)),
            *((d.wire.name or json_name(d.attribute), d.attribute, d.wire.owner,
               d.wire.omit_empty, _encoder(d.kind, d.wire)) for d in derived(cls)))
    return known


def derived(cls: type) -> tuple[Derived, ...]:
    return tuple(getattr(cls, DERIVED_ATTRIBUTE, ()))


def keys(cls: type) -> tuple[str, ...]:
    """The JSON names of ``cls``'s fields, in declaration order."""
    return tuple(s.key for s in slots(cls))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


T = TypeVar("T")


def decode(cls: type[T], data: Any, path: str = "", *, unknown: Unknown = "ignore") -> T:
    """``data`` (parsed JSON or YAML) as a ``cls``; raises WireError naming the bad field.
    ``unknown``: what a key no field declares does, here and in every nested object."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise WireError(path, f"{path or 'the document'} must be a mapping, not "
                              f"{type(data).__name__}")
    if unknown == "refuse":
        known = set(keys(cls))
        extra = sorted(str(k) for k in data if k not in known)
        if extra:
            where = f"{path}: unknown keys" if path else "unknown top-level keys"
            raise WireError(path, f"{where} {', '.join(extra)} "
                                  f"(known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for attribute, key, has_default, read in _readers(cls, unknown):
        raw = data.get(key)
        if raw is None:
            if not has_default:
                raise WireError(_join(path, key), f"{_join(path, key)} is required")
            continue
        values[attribute] = read(raw, path, key)
    return cls(**values)


def encode(obj: Any, *, owner: str | None = None) -> dict[str, Any]:
    """``obj``'s wire form: every field (or, given ``owner``, that writer's), None left out."""
    out: dict[str, Any] = {}
    for key, attribute, writer, omit_empty, convert in _writers(type(obj)):
        if owner is not None and writer != owner:
            continue
        value = getattr(obj, attribute)
        if value is None or (omit_empty and not value):
            continue
        out[key] = convert(value)
    return out


def _number(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def bounds(declared: Wire) -> tuple[float | None, float | None]:
    """The lowest and highest value the field takes, from its schema bounds and limits."""
    low, high = declared.minimum, declared.maximum
    for limit in declared.limits:
        if isinstance(limit.value, str):
            continue
        if limit.op == ">=":
            low = limit.value if low is None else max(low, limit.value)
        else:
            high = limit.value if high is None else min(high, limit.value)
    return low, high


def problems(obj: Any, path: str = "") -> list[str]:
    """Every bound of ``obj``'s fields that its values break, one sentence each: what the
    API server's schema refuses, for values built in code (settings, merged classes)."""
    out: list[str] = []
    fields = slots(type(obj))
    by_key = {s.key: s for s in fields}
    for slot in fields:
        value, where, declared = getattr(obj, slot.attribute), _join(path, slot.key), slot.wire
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out += problems(value, where)
            continue
        if isinstance(value, str):
            if declared.min_length == 1 and not value:
                out.append(f"{where} must be set")
            if declared.max_length is not None and len(value) > declared.max_length:
                out.append(f"{where} must be at most {declared.max_length} characters long")
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        low, high = bounds(declared)
        why = "".join(f": {limit.why}" for limit in declared.limits if limit.why)
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                out.append(f"{where} ({_number(value)}) must be between {_number(low)} and "
                           f"{_number(high)}{why}")
            elif low is not None:
                out.append(f"{where} ({_number(value)}) must be at least {_number(low)}{why}")
            else:
                out.append(f"{where} ({_number(value)}) must be at most {_number(high or 0)}"
                           f"{why}")
        for limit in declared.limits:
            if not isinstance(limit.value, str):
                continue
            other = by_key[limit.value]
            ceiling = getattr(obj, other.attribute)
            if value > ceiling:
                out.append(f"{where} ({_number(value)}) must not exceed "
                           f"{_join(path, other.key)} ({_number(ceiling)})")
    return out


# -- converters, chosen once per field from its type --

def optional(tp: Any) -> tuple[Any, bool]:
    """``X`` and whether the annotation was ``X | None``."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) in (Mapping, dict)


def _scalar(kind: type, reason: str, accept: tuple[type, ...] | None = None) -> Decoder:
    allowed = accept or (kind,)

    def read(raw: Any, parent: str, key: str | int) -> Any:
        if not isinstance(raw, allowed) or (kind is not bool and isinstance(raw, bool)):
            raise WireError.invalid(_join(parent, key), raw, reason)
        return raw if type(raw) is kind else kind(raw)
    return read


def _decoder(tp: Any, declared: Wire, unknown: Unknown) -> Decoder:
    codec = declared.codec
    if codec is not None:
        def custom(raw: Any, parent: str, key: str | int) -> Any:
            try:
                return codec.decode(raw)
            except (TypeError, ValueError) as e:
                raise WireError.invalid(_join(parent, key), raw, str(e)) from e
        return custom
    tp, _ = optional(tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        return lambda raw, parent, key: raw
    if tp is str:
        return _scalar(str, "expected a string")
    if tp is bool:
        return _scalar(bool, "expected true or false")
    if tp is int:
        return _scalar(int, "expected an integer")
    if tp is float:
        return _scalar(float, "expected a number", (int, float))
    if tp is dt.datetime:
        def timestamp(raw: Any, parent: str, key: str | int) -> dt.datetime:
            parsed = parse_time(raw) if isinstance(raw, str) else None
            if parsed is None:
                raise WireError.invalid(_join(parent, key), raw,
                                        "expected an RFC 3339 date-time")
            return parsed
        return timestamp
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp, declared.fallback)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        cls = tp
        return lambda raw, parent, key: decode(cls, raw, _join(parent, key), unknown=unknown)
    if origin in (tuple, frozenset):
        return _sequence(origin, _decoder(typing.get_args(tp)[0], Wire(), unknown),
                         declared.drop_invalid)
    if is_mapping(tp):
        value = _decoder(typing.get_args(tp)[1], Wire(), unknown)

        def mapping(raw: Any, parent: str, key: str | int) -> dict[str, Any]:
            if not isinstance(raw, Mapping):
                raise WireError.invalid(_join(parent, key), raw, "expected a mapping")
            path = _join(parent, key)
            return {str(k): value(v, path, str(k)) for k, v in raw.items()}
        return mapping
    raise TypeError(f"no wire form for {tp!r}")


def _enum(kind: type[enum.Enum], fallback: Any) -> Decoder:
    reason = f"expected one of {', '.join(str(m.value) for m in kind)}"

    def read(raw: Any, parent: str, key: str | int) -> Any:
        try:
            return kind(raw)
        except ValueError:
            if fallback is not None:
                return fallback
            raise WireError.invalid(_join(parent, key), raw, reason) from None
    return read


def _sequence(origin: Any, item: Decoder, drop_invalid: bool) -> Decoder:
    def read(raw: Any, parent: str, key: str | int) -> Any:
        path = _join(parent, key)
        if not isinstance(raw, list | tuple):
            raise WireError.invalid(path, raw, "expected a list")
        values = []
        for i, x in enumerate(raw):
            try:
                values.append(item(x, path, i))
            except WireError:
                if not drop_invalid:
                    raise
        return origin(values)
    return read


def _encoder(tp: Any, declared: Wire) -> Encoder:
    if declared.codec is not None:
        return declared.codec.encode
    tp, _ = optional(tp)
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return lambda v: v.value
    if tp is dt.datetime:
        return rfc3339
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return encode
    if origin is tuple:
        item = _encoder(typing.get_args(tp)[0], Wire())
        return lambda v: [item(x) for x in v]
    if origin is frozenset:
        item = _encoder(typing.get_args(tp)[0], Wire())
        return lambda v: sorted(item(x) for x in v)
    if is_mapping(tp):
        value = _encoder(typing.get_args(tp)[1], Wire())
        return lambda v: {k: value(x) for k, x in v.items()}
    return lambda v: v
