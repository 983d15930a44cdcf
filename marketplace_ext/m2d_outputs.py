"""What may leave the data owner after a model-to-data run: declared model files, checked by
content, and nothing that can carry rows of the owner's tables.

- ``.pt``/``.pth``: a torch.save zip whose pickle references only what
  ``torch.load(weights_only=True)`` admits (tensors, storages, dtypes, OrderedDict): a pickled
  DataFrame, or any other object, is refused. The pickle is scanned, never loaded, here.
- ``.npy``/``.npz``: numeric arrays only (no object arrays, which are pickles).
- ``.json``: must match a schema the demander declared with the request, built only from
  numbers, integers, booleans, null, arrays with a ``maxItems`` bound and objects with named
  properties. No strings: a string is where a table goes (``df.to_json()``).
- The demander sees an error *category* of a failed run; the owner sees the text (an error
  message can carry data: ``raise ValueError(df.to_csv())``).
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import zipfile
from pathlib import PurePosixPath

import jsonschema

from .errors import InvalidField

# Model formats whose content can be checked, and how.
OUTPUT_TYPES: dict[str, str] = {
    ".pt": "torch",  # torch.save's zip container
    ".pth": "torch",
    ".npz": "npz",
    ".npy": "npy",
    ".json": "json",
}
# Formats that hold rows of a table: the raw data would walk out.
ROW_FORMATS = (".csv", ".tsv", ".parquet", ".xlsx", ".xls", ".txt", ".jsonl", ".feather",
               ".arrow", ".orc", ".avro", ".pkl", ".pickle", ".db", ".sqlite")

#: the longest string a model's pickle may hold (parameter names, storage keys)
MAX_PICKLE_STRING = 256
#: the largest ``maxItems`` a declared array may have
MAX_ARRAY_ITEMS = 1_000_000
_SCHEMA_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items",
                    "maxItems", "minItems", "minimum", "maximum", "description"}
_SCHEMA_TYPES = {"number", "integer", "boolean", "null", "array", "object"}
_PROPERTY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_MAX_SCHEMA_DEPTH = 8

# What torch.load(weights_only=True) lets a pickle reference (torch/_weights_only_unpickler).
_TORCH_DTYPES = {
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
    "bool", "complex64", "complex128", "double", "float", "half", "long", "int", "short",
}
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.nn.parameter", "Parameter"),
    ("torch.serialization", "_get_layout"),
    ("torch", "strided"),
}


class OutputRefused(ValueError):
    """A produced file failed the return checks; it stays with the owner."""


def _global_allowed(module: str, name: str) -> bool:
    if (module, name) in _ALLOWED_GLOBALS:
        return True
    if module == "torch._utils" and name.startswith("_rebuild_") and name not in (
            "_rebuild_from_type", "_rebuild_from_type_v2"):
        return True
    return module == "torch" and (name.endswith("Storage") or name in _TORCH_DTYPES)


def check_pickle_globals(data: bytes) -> None:
    """Refuse a pickle that references anything but tensor machinery (the allow-list of
    ``torch.load(weights_only=True)``), without unpickling it."""
    strings: list[str] = []
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                # parameter names and storage keys are short; a table is not
                if len(arg) > MAX_PICKLE_STRING:
                    raise OutputRefused(f"it pickles a string of {len(arg)} characters, not "
                                        "only tensors")
                strings.append(arg)
            elif opcode.name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"):
                raise OutputRefused("it pickles raw bytes, not only tensors")
            elif opcode.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                if not _global_allowed(module, name):
                    raise OutputRefused(f"it pickles {module}.{name}, not only tensors")
            elif opcode.name == "STACK_GLOBAL":
                if len(strings) < 2 or not _global_allowed(strings[-2], strings[-1]):
                    what = ".".join(strings[-2:]) or "an unknown global"
                    raise OutputRefused(f"it pickles {what}, not only tensors")
            elif opcode.name in ("OBJ", "NEWOBJ_EX"):
                raise OutputRefused(f"it builds objects ({opcode.name}), not only tensors")
    except OutputRefused:
        raise
    except Exception as e:  # a truncated or malformed pickle
        raise OutputRefused(f"its pickle is malformed: {type(e).__name__}") from None


def _check_torch(data: bytes) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise OutputRefused("not a torch.save container (no single data.pkl)")
            for name in archive.namelist():
                suffix = PurePosixPath(name).suffix.lower()
                if suffix in ROW_FORMATS and name not in pickles:
                    raise OutputRefused(f"it contains a table file: {name}")
            check_pickle_globals(archive.read(pickles[0]))
    except zipfile.BadZipFile as e:
        raise OutputRefused(f"a broken zip container: {e}") from None


def _check_numpy(data: bytes, npz: bool) -> None:
    import numpy as np

    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        arrays = [loaded[k] for k in loaded.files] if npz else [loaded]
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise OutputRefused(f"not a plain numeric array file: {str(e)[:120]}") from None
    for array in arrays:
        if array.dtype.kind not in "biufc":
            raise OutputRefused(f"an array of dtype {array.dtype}: only numbers are returned")


def check_output(path: str, data: bytes, max_bytes: int, schema: dict | None = None) -> None:
    """Raise :class:`OutputRefused` unless ``data`` is what its declared type says, small
    enough to be a model, and (JSON) matches its declared ``schema``."""
    if len(data) > max_bytes:
        raise OutputRefused(f"{len(data)} bytes; the limit is {max_bytes}")
    kind = OUTPUT_TYPES.get(PurePosixPath(path).suffix.lower())
    if kind == "torch":
        if not data.startswith(b"PK\x03\x04"):
            raise OutputRefused("not a zip container (torch.save)")
        _check_torch(data)
    elif kind in ("npy", "npz"):
        _check_numpy(data, npz=kind == "npz")
    elif kind == "json":
        try:
            value = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise OutputRefused(f"not valid JSON: {type(e).__name__}") from None
        if schema is None:
            raise OutputRefused("no schema was declared for it")
        try:
            jsonschema.validate(value, _closed(schema))
        except jsonschema.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "the document"
            raise OutputRefused(f"{where} does not match the declared schema "
                                f"({e.validator})") from None
    else:
        raise OutputRefused("not a returnable type")


def _closed(schema: dict) -> dict:
    """The schema with ``additionalProperties: false`` on every object: undeclared keys (and
    the strings in them) are refused whatever the demander wrote."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _closed(v) for k, v in out["properties"].items()}
        out["additionalProperties"] = False
    if isinstance(out.get("items"), dict):
        out["items"] = _closed(out["items"])
    return out


def check_schema(schema: object, field: str, depth: int = 0) -> dict:
    """A declared output schema, or :class:`InvalidField` naming ``field``: only numbers,
    integers, booleans, null, bounded arrays and objects with named properties."""
    if not isinstance(schema, dict) or not schema:
        raise InvalidField("a schema is a JSON object such as {\"type\": \"number\"}", field)
    if depth > _MAX_SCHEMA_DEPTH:
        raise InvalidField(f"schemas nest at most {_MAX_SCHEMA_DEPTH} levels", field)
    unknown = set(schema) - _SCHEMA_KEYWORDS
    if unknown:
        raise InvalidField(f"schema keywords {sorted(unknown)} are not allowed; use "
                           f"{sorted(_SCHEMA_KEYWORDS)}", field)
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types
    if not isinstance(types, list) or not types or not all(
            isinstance(t, str) and t in _SCHEMA_TYPES for t in types):
        raise InvalidField(f"type must be one or more of {sorted(_SCHEMA_TYPES)} (no strings: "
                           "they could carry rows)", f"{field}.type")
    if "array" in types:
        bound = schema.get("maxItems")
        if (not isinstance(bound, int) or isinstance(bound, bool)
                or not 0 <= bound <= MAX_ARRAY_ITEMS):
            raise InvalidField(f"an array needs maxItems from 0 to {MAX_ARRAY_ITEMS}",
                               f"{field}.maxItems")
        check_schema(schema.get("items"), f"{field}.items", depth + 1)
    if "object" in types:
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            raise InvalidField("an object needs its properties named", f"{field}.properties")
        for name, sub in properties.items():
            if not _PROPERTY_RE.match(name):
                raise InvalidField(f"property name {name!r} is not a plain name",
                                   f"{field}.properties")
            check_schema(sub, f"{field}.properties.{name}", depth + 1)
        if schema.get("additionalProperties", False) is not False:
            raise InvalidField("additionalProperties must be false", field)
    for bound in ("minimum", "maximum", "minItems"):
        if bound in schema and (not isinstance(schema[bound], int | float)
                                or isinstance(schema[bound], bool)):
            raise InvalidField(f"{bound} must be a number", f"{field}.{bound}")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InvalidField(f"not a valid JSON schema: {e.message}", field) from None
    return schema


def check_output_schemas(raw: object, outputs: list[str]) -> dict[str, dict]:
    """The demander's ``output_schemas``: one checked schema per declared ``.json`` output."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidField("output_schemas maps each declared .json output to its schema",
                           "output_schemas")
    wanted = [p for p in outputs if PurePosixPath(p).suffix.lower() == ".json"]
    extra = set(raw) - set(wanted)
    if extra:
        raise InvalidField(f"output_schemas names {sorted(extra)}, which are not declared "
                           ".json outputs", "output_schemas")
    missing = [p for p in wanted if p not in raw]
    if missing:
        raise InvalidField(f"{missing[0]!r} needs a schema in output_schemas (numbers and "
                           "bounded arrays, e.g. {\"type\": \"object\", \"properties\": "
                           "{\"loss\": {\"type\": \"number\"}}})", "output_schemas")
    return {p: check_schema(raw[p], f"output_schemas[{p}]") for p in wanted}


def error_category(status: str, error: str | None) -> str | None:
    """What a demander learns of a failed owner-side run: the kind of failure, never its text
    (which the notebook controls and which can carry the owner's rows)."""
    if status in ("succeeded", "queued", "running") or not error:
        return error if status != "failed" else "the run failed"
    text = error.lower()
    if status == "cancelled":
        return "the run was cancelled"
    if text.startswith("timed out"):
        return "the run timed out"
    if "limit" in text and ("exceeded" in text or "sandbox" in text):
        return "the run exceeded a resource limit of the sandbox"
    if "platform" in text and ("down" in text or "unavailable" in text or "restart" in text):
        return "the data owner's platform was unavailable"
    return "the notebook failed on the owner's data; the data owner can read the error"
