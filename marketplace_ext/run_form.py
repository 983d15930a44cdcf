"""A run form generated from a notebook's papermill parameters, shared by the run page and the
``RunForm`` widget.

papermill's inspection (a version's ``parameters``: ``{name: {"inferred_type_name",
"default", "help"}}``, the default as source text) becomes one typed field per parameter the
caller may set (:func:`form_fields`); what a person typed becomes the run request's
``parameters`` (:func:`parse_values`), each problem an :class:`InvalidField` naming
``parameters.<name>``, the field the API names too, so a page or a widget shows it next to its
input. A field left at its default is not sent: the notebook keeps its own default.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InvalidField
from .parameters import CONTEXT_PARAMETERS, _split_top, validate_parameters

#: input kinds: a whole number, a number, a checkbox, one line of text, a JSON value, and a
#: parameter without a type (JSON if it parses, else the text)
KINDS = ("int", "float", "bool", "str", "json", "any")
_NO_DEFAULT = object()


@dataclass(frozen=True)
class Field:
    """One input of the form."""

    name: str  # the parameter
    kind: str  # one of KINDS
    type_name: str  # papermill's inferred type name, shown to the user
    optional: bool  # empty means None
    default: object  # the parsed default (_NO_DEFAULT when it is an expression)
    default_text: str  # what the input shows at first
    help: str  # the parameter's comment

    @property
    def key(self) -> str:
        """The form field's name: the API's error field for this parameter."""
        return f"parameters.{self.name}"

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT


def _base_type(declared: str) -> tuple[str, bool]:
    """(the type without None, whether None is allowed) of papermill's type name."""
    declared = (declared or "").strip()
    if declared.startswith("Optional[") and declared.endswith("]"):
        return declared[len("Optional["):-1].strip(), True
    union = _split_top(declared, "|")
    if len(union) > 1:
        rest = [u for u in union if u != "None"]
        return (rest[0] if len(rest) == 1 else "|".join(rest)), len(rest) < len(union)
    return declared, False


def _kind(base: str) -> str:
    head = base.partition("[")[0].strip()
    if head in ("int", "float", "bool", "str"):
        return head
    if head in ("", "None", "Any", "typing.Any", "object"):
        return "any"
    return "json"


def _text_of(kind: str, value: object) -> str:
    if value is None:
        return ""
    if kind == "bool" and isinstance(value, bool):
        return repr(value)  # as the notebook writes it
    if kind in ("str",) and isinstance(value, str):
        return value
    if kind == "any" and isinstance(value, str):
        return json.dumps(value)
    if kind in ("int", "float") and isinstance(value, (int, float)):
        return repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def form_fields(spec: Mapping[str, Mapping]) -> list[Field]:
    """The fields of ``spec`` a caller sets (context parameters are the marketplace's), in the
    notebook's order."""
    fields = []
    for name, p in spec.items():
        if name in CONTEXT_PARAMETERS:
            continue
        type_name = str(p.get("inferred_type_name") or "None")
        base, optional = _base_type(type_name)
        kind = _kind(base)
        source = str(p.get("default", "")).strip()
        try:
            default = ast.literal_eval(source)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            default = _NO_DEFAULT
        optional = optional or default is None
        text = source if default is _NO_DEFAULT else _text_of(kind, default)
        fields.append(Field(name=name, kind=kind, type_name=type_name, optional=optional,
                            default=default, default_text=text, help=str(p.get("help") or "")))
    return fields


def _convert(field: Field, raw: object) -> object:
    """The value of one input (text from a page, or a widget's typed value)."""
    if field.kind == "bool":
        if isinstance(raw, bool):
            return raw
        return str(raw or "").lower() in ("on", "true", "1", "yes")
    if not isinstance(raw, str):
        return raw  # a widget's int or float
    text = raw.strip()
    if field.kind == "str":
        if raw == "" and field.optional and field.default is None:
            return None
        return raw
    if text == "":
        if field.optional:
            return None
        raise InvalidField(f"{field.name} needs a value ({field.type_name})", field.key)
    if field.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise InvalidField(f"{field.name} must be a whole number", field.key) from None
    if field.kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise InvalidField(f"{field.name} must be a number", field.key) from None
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidField(f"{field.name} must be a finite number", field.key)
        return value
    try:
        return json.loads(text)
    except ValueError as e:
        if field.kind == "any":
            return raw
        raise InvalidField(f"{field.name} must be JSON ({field.type_name}), e.g. "
                           f"{field.default_text or '[]'}: {e}", field.key) from None


def parse_values(spec: Mapping[str, Mapping], values: Mapping[str, object]) -> dict:
    """The run request's ``parameters`` from a form's ``values`` (keyed by :attr:`Field.key`
    or by the parameter's name): typed, checked against the notebook's types, and only those
    that differ from the notebook's default. Raises :class:`InvalidField` naming the field."""
    out: dict = {}
    for field in form_fields(spec):
        if field.key in values:
            raw = values[field.key]
        elif field.name in values:
            raw = values[field.name]
        elif field.kind == "bool":
            raw = False  # an unticked checkbox is not sent
        else:
            continue
        value = _convert(field, raw)
        same_type = type(value) is type(field.default) or (
            field.kind == "float" and {type(value), type(field.default)} <= {int, float})
        if field.has_default and same_type and value == field.default:
            continue
        if not field.has_default and isinstance(raw, str) and raw.strip() == field.default_text:
            continue
        out[field.name] = value
    return validate_parameters(dict(spec), out)
