"""Path ids: plain ASCII decimal within 64 bits, or a 404 naming the field."""

import pytest

from marketplace_ext.errors import NotFound
from marketplace_ext.ids import MAX_ID, parse_id


@pytest.mark.parametrize("text, value", [("0", 0), ("17", 17), (str(MAX_ID), MAX_ID), (5, 5)])
def test_plain_decimal_ids(text, value):
    assert parse_id(text, "run", "run") == value


@pytest.mark.parametrize("text", [
    "²", "١٢", "+1", "-1", " 1", "1 ", "1_000", "0x10", "", str(MAX_ID + 1), "9" * 40,
    "１２", None, 1.0, True, -3,
])
def test_anything_else_is_not_found(text):
    with pytest.raises(NotFound) as e:
        parse_id(text, "run", "run")
    assert e.value.field == "run" and e.value.status == 404
