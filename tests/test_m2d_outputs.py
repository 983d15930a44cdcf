"""The model-to-data return checks on real files: torch.save containers, numpy arrays, JSON
against declared schemas, and the error categories a demander sees."""

from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from marketplace_ext.errors import InvalidField
from marketplace_ext.m2d_outputs import (
    OutputRefused,
    check_output,
    check_output_schemas,
    error_category,
)

LIMIT = 10 * 2**20


def saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class Exploit:
    def __reduce__(self):
        return (os.system, ("id",))


def test_tensors_pass_and_anything_else_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    check_output("outputs/model.pt", saved(model.state_dict()), LIMIT)
    check_output("outputs/model.pt", saved({"w": torch.zeros(4, dtype=torch.int64),
                                            "b": torch.ones(2, dtype=torch.float16)}), LIMIT)
    frame = pd.DataFrame({"name": ["CANARY-a-name-1"], "kwh": [1.0]})
    for obj in (frame, {"weights": torch.zeros(1), "rows": frame}, Exploit(),
                {"names": ["CANARY-a-name-1," * 40]}, model):
        with pytest.raises(OutputRefused, match="not only tensors|builds objects"):
            check_output("outputs/model.pt", saved(obj), LIMIT)
    with pytest.raises(OutputRefused, match="zip"):
        check_output("outputs/model.pt", pickle.dumps(torch.zeros(1)), LIMIT)
    with pytest.raises(OutputRefused, match="limit"):
        check_output("outputs/model.pt", saved(torch.zeros(1000)), 100)


def test_numpy_outputs_hold_numbers_only():
    def npy(array) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=True)
        return buffer.getvalue()

    check_output("outputs/w.npy", npy(np.arange(6.0).reshape(2, 3)), LIMIT)
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(3), b=np.ones(2, dtype=np.int32))
    check_output("outputs/w.npz", buffer.getvalue(), LIMIT)
    for bad in (np.array(["CANARY-a-name-1"]), np.array([{"x": 1}], dtype=object)):
        with pytest.raises(OutputRefused):
            check_output("outputs/w.npy", npy(bad), LIMIT)


SCHEMA = {"type": "object", "properties": {"loss": {"type": "number"},
                                           "curve": {"type": "array", "maxItems": 3,
                                                     "items": {"type": "number"}}}}


def test_json_must_match_its_declared_schema():
    schemas = check_output_schemas({"outputs/m.json": SCHEMA}, ["outputs/m.json", "outputs/x.pt"])
    good = json.dumps({"loss": 0.25, "curve": [1, 0.5]}).encode()
    check_output("outputs/m.json", good, LIMIT, schemas["outputs/m.json"])
    for bad in ({"loss": "CANARY"}, {"loss": 1, "table": "{...}"}, {"curve": [1, 2, 3, 4]},
                [1, 2]):
        with pytest.raises(OutputRefused, match="schema"):
            check_output("outputs/m.json", json.dumps(bad).encode(), LIMIT, SCHEMA)
    with pytest.raises(OutputRefused, match="no schema"):
        check_output("outputs/m.json", good, LIMIT, None)


@pytest.mark.parametrize("raw, field", [
    ({}, "output_schemas"),
    ({"outputs/m.json": {"type": "string"}}, "output_schemas[outputs/m.json].type"),
    ({"outputs/m.json": {"type": "array", "items": {"type": "number"}}},
     "output_schemas[outputs/m.json].maxItems"),
    ({"outputs/m.json": {"type": "object"}}, "output_schemas[outputs/m.json].properties"),
    ({"outputs/m.json": {"type": "number", "pattern": "x"}}, "output_schemas[outputs/m.json]"),
    ({"outputs/m.json": {"type": "object", "properties": {"a": {"type": "number"}},
                         "additionalProperties": True}}, "output_schemas[outputs/m.json]"),
    ({"outputs/m.json": SCHEMA, "outputs/n.json": SCHEMA}, "output_schemas"),
    ("nope", "output_schemas"),
])
def test_bad_schemas_name_their_field(raw, field):
    with pytest.raises(InvalidField) as e:
        check_output_schemas(raw, ["outputs/m.json"])
    assert e.value.field == field


def test_the_demander_sees_a_category_never_the_text():
    leak = "ValueError: name,phone\nCANARY-a-name-1,555"
    assert "CANARY" not in error_category("failed", leak)
    assert error_category("failed", "timed out after 60 s") == "the run timed out"
    assert "limit" in error_category("failed", "the run exceeded its memory limit (2 GiB)")
    assert error_category("succeeded", None) is None
