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


def test_download_links_are_the_users_and_expire():
    from marketplace_ext.download_links import DownloadLinks
    from marketplace_ext.errors import NotFound

    links = DownloadLinks(b"k" * 32, ttl_seconds=60)
    token, link = links.mint("alice", "ab" * 32, "报告.csv", log_index=7, now=1000)
    assert links.open(token, "alice", now=1059) == link
    payload, mac = token.split(".")
    forged = DownloadLinks(b"x" * 32).mint("alice", "cd" * 32, "x", now=1000)[0]
    for bad_token, user, now in [
        (token, "bob", 1000),  # minted for another user
        (token, "alice", 1061),  # expired
        (f"{payload}.{mac[:-2]}AA", "alice", 1000),  # tampered signature
        (forged, "alice", 1000),  # signed with another key
        ("garbage", "alice", 1000),
    ]:
        with pytest.raises(NotFound) as e:
            links.open(bad_token, user, now=now)
        assert e.value.field == "token"
