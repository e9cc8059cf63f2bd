"""The OpenAPI v3 schema of a wire dataclass, from its fields' declarations (``api/wire.py``).

Structural, as the API server wants a CRD's schema: every property typed, arrays with their
``x-kubernetes-list-type``, bounds as ``minimum``/``maximum`` or, where the refusal should say
why, as CEL rules on the enclosing object (a field's ``limits``).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import typing
from typing import Any

from azure_cni.api.wire import (
    RULES_ATTRIBUTE,
    Limit,
    Rule,
    Slot,
    Wire,
    derived,
    is_mapping,
    json_name,
    optional,
    slots,
)


def object_schema(cls: type, description: str = "", *, partial: bool = False
                  ) -> dict[str, Any]:
    """The schema of ``cls``.

    ``partial``: an object holding only the fields its author set (a NodeIPPoolClass's
    pool): nothing required, no defaults, no rule on a field's old value, and a limit
    between two fields checked only when both are there.
    """
    out: dict[str, Any] = {"type": "object"}
    if description:
        out["description"] = description
    fields = slots(cls)
    required = [s.key for s in fields if s.wire.required]
    if required and not partial:
        out["required"] = required
    properties = {s.key: _property(s.type, s.wire, s, partial) for s in fields}
    for d in derived(cls):
        properties[d.wire.name or json_name(d.attribute)] = _property(d.kind, d.wire, None,
                                                                       partial)
    out["properties"] = properties
    rules = [rule for s in fields for limit in s.wire.limits
             if (rule := _limit_rule(s.key, limit, partial)) is not None]
    rules += [r for r in getattr(cls, RULES_ATTRIBUTE, ())
              if not (partial and "oldSelf" in r.rule)]
    if rules:
        out["x-kubernetes-validations"] = [r.document() for r in rules]
    return out


def _limit_rule(key: str, limit: Limit, partial: bool) -> Rule | None:
    if isinstance(limit.value, str):
        other = limit.value
        check = f"self.{key} <= self.{other}"
        if partial:
            check = f"!has(self.{key}) || !has(self.{other}) || {check}"
        return Rule(check, f"{key} must not exceed {other}", f".{key}")
    if partial:
        # a class's single-field limits are checked where its fields meet the chart's
        # defaults (``choose_class``), as they were before this schema was generated
        return None
    words = "at least" if limit.op == ">=" else "at most"
    why = f": {limit.why}" if limit.why else ""
    return Rule(f"self.{key} {limit.op} {limit.value}", f"{key} must be {words} "
                f"{limit.value}{why}", f".{key}")


def _property(tp: Any, declared: Wire, slot: Slot | None, partial: bool) -> dict[str, Any]:
    # a copy: YAML would write a shared object once and refer to it (&id001) after
    prop = copy.deepcopy(dict(declared.codec.schema)) if declared.codec is not None \
        else type_schema(tp, declared)
    if declared.format:
        prop["format"] = declared.format
    if declared.description:
        prop["description"] = declared.description
    for key, value in (("minimum", declared.minimum), ("maximum", declared.maximum),
                       ("minLength", declared.min_length), ("maxLength", declared.max_length)):
        if value is not None:
            prop[key] = value
    if declared.default_in_schema and not partial and slot is not None:
        prop["default"] = slot.encode(slot.default)
    rules = list(declared.rules)
    if declared.immutable and not partial:
        rules.append(Rule("self == oldSelf", declared.immutable))
    if rules:
        prop["x-kubernetes-validations"] = [r.document() for r in rules]
    return prop


def type_schema(tp: Any, declared: Wire) -> dict[str, Any]:
    """The schema of a Python type: its OpenAPI type and what its items or fields are."""
    tp, _ = optional(tp)
    origin = typing.get_origin(tp)
    scalars: dict[Any, str] = {str: "string", bool: "boolean", int: "integer",
                               float: "number"}
    if tp in scalars:
        return {"type": scalars[tp]}
    if tp is dt.datetime:
        return {"type": "string", "format": "date-time"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        out: dict[str, Any] = {"type": "string"}
        if not declared.open_enum:
            out["enum"] = [str(m.value) for m in tp]
        return out
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return object_schema(tp)
    if origin in (tuple, frozenset):
        array: dict[str, Any] = {
            "type": "array", "items": type_schema(typing.get_args(tp)[0], Wire()),
            "x-kubernetes-list-type": declared.list_type or (
                "set" if origin is frozenset else "atomic")}
        if declared.map_keys:
            array["x-kubernetes-list-map-keys"] = list(declared.map_keys)
        return array
    if is_mapping(tp):
        return {"type": "object",
                "additionalProperties": type_schema(typing.get_args(tp)[1], Wire())}
    raise TypeError(f"no OpenAPI schema for {tp!r}")
