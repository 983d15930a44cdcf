"""Download headers: RFC 6266 Content-Disposition that survives any file name."""

from urllib.parse import unquote

import pytest

from marketplace_ext.handlers.base import content_disposition


@pytest.mark.parametrize("name", ["model.pt", "报告.csv", 'a"b.txt', "dir/x y.json", "ü.bin"])
def test_content_disposition_is_latin1_and_keeps_the_exact_name(name):
    value = content_disposition(name)
    value.encode("latin-1")  # what Tornado must put on the wire; a 500 before
    assert value.startswith("attachment; filename=\"")
    fallback = value.split('filename="', 1)[1].split('"', 1)[0]
    assert fallback.isascii() and '"' not in fallback and "/" not in fallback
    exact = unquote(value.split("filename*=UTF-8''", 1)[1])
    assert exact == name.rsplit("/", 1)[-1]
