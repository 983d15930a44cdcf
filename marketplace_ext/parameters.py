"""Checking a run request's parameters against a notebook's ``parameters`` cell.

papermill's ``inspect_notebook`` infers each parameter's type name from its annotation
(``n: int = 1`` → ``"int"``, ``ids: list[str] = []`` → ``"list[str]"``); a request's
parameters (decoded JSON) must fit those names before a run is queued or a call made.
Context parameters (:data:`CONTEXT_PARAMETERS`) are set by the marketplace, never by a caller.
"""

from __future__ import annotations

import re

from .errors import InvalidField

# set by the marketplace when the notebook declares them; never by the user
CONTEXT_PARAMETERS: tuple[str, ...] = ("run_id", "unit", "output_dir", "input_path")

_BASE_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list": (list,),
    "dict": (dict,),
}
_TYPING_ALIASES = {"List": "list", "Dict": "dict", "Str": "str"}


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _describe_value(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _type_problem(declared: str, value: object) -> str | None:
    """Why ``value`` (from JSON) does not fit papermill's ``inferred_type_name``, or None.
    Unknown type names accept anything: the bundle's validation refused them at publication."""
    declared = declared.strip()
    if declared in ("", "None", "Any", "typing.Any", "object"):
        return None  # no annotation: papermill could not infer a type
    union = _split_top(declared, "|")
    if len(union) == 1 and declared.startswith("Optional[") and declared.endswith("]"):
        union = [declared[len("Optional["):-1], "None"]
    if len(union) > 1:
        if any((value is None) if part == "None" else _type_problem(part, value) is None
               for part in union):
            return None
        return f"is {_describe_value(value)}, not {declared}"
    base, _, args = declared.partition("[")
    base = _TYPING_ALIASES.get(base.strip(), base.strip())
    expected = _BASE_TYPES.get(base)
    if expected is None:
        return None
    if not isinstance(value, expected) or (isinstance(value, bool) and base != "bool"):
        return f"is {_describe_value(value)}, not {declared}"
    if args.endswith("]"):
        inner = _split_top(args[:-1], ",")
        if base == "list" and len(inner) == 1:
            for i, item in enumerate(value):  # type: ignore[arg-type]
                why = _type_problem(inner[0], item)
                if why:
                    return f"item {i} {why}"
        if base == "dict" and len(inner) == 2:
            for key, item in value.items():  # type: ignore[union-attr]
                why = _type_problem(inner[1], item)
                if why:
                    return f"value of {key!r} {why}"
    return None


# a numeric parameter's comment may declare its range: "... (1 to 28)" or "... (0 or 2 to 12)"
_RANGE = re.compile(r"\((?:(-?\d+(?:\.\d+)?) or )?(-?\d+(?:\.\d+)?) to (-?\d+(?:\.\d+)?)\)")


def _range_problem(help_text: object, value: object) -> str | None:
    """Why ``value`` is outside the range its parameter's comment declares, or None."""
    found = _RANGE.search(str(help_text or ""))
    if found is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    extra, low, high = found.groups()
    if (extra is not None and value == float(extra)) or float(low) <= value <= float(high):
        return None
    return f"must be {extra + ' or ' if extra else ''}between {low} and {high}, not {value!r}"


def validate_parameters(spec: dict, given: object) -> dict:
    """Check ``given`` (a run request's parameters, decoded JSON) against ``spec``, a version's
    papermill inspection ``{name: {"name", "inferred_type_name", "default", "help"}}``.

    Returns the given parameters (a new dict; parameters not given keep the notebook's
    defaults and are not included). Raises :class:`InvalidField` with ``field =
    "parameters.<name>"`` for an unknown name, a reserved context name or a value of the wrong
    type (``int`` takes integers but not booleans, ``float`` integers or numbers, ``list[str]``
    checks its items) or a number outside the range its comment declares (``(1 to 28)``), and
    ``field = "parameters"`` when ``given`` is not an object.
    """
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise InvalidField(f"parameters must be a JSON object of name: value, not "
                           f"{_describe_value(given)}", "parameters")
    out: dict = {}
    for name, value in given.items():
        fld = f"parameters.{name}"
        if not isinstance(name, str):
            raise InvalidField("parameter names must be strings", "parameters")
        if name not in spec:
            known = ", ".join(sorted(spec)) or "none"
            raise InvalidField(f"unknown parameter {name!r}; this version takes: {known}", fld)
        if name in CONTEXT_PARAMETERS:
            raise InvalidField(f"parameter {name!r} is set by the marketplace, not by the caller",
                               fld)
        declared = str(spec[name].get("inferred_type_name") or "None")
        if value is None and str(spec[name].get("default", "")).strip() == "None":
            out[name] = None
            continue
        why = _type_problem(declared, value)
        if why:
            raise InvalidField(f"parameter {name!r} must be {declared}: it {why}", fld)
        why = _range_problem(spec[name].get("help"), value)
        if why:
            raise InvalidField(f"parameter {name!r} {why}", fld)
        out[name] = value
    return out
