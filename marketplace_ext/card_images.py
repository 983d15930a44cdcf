"""The images of a product card (issue 17): a PNG or JPEG of a version's bundle that the
version's README shows (``![...](card/output.png)``), served to whoever may see the card.

The card is the shop window: showing its images spends nothing and needs no entitlement. Only
files the README itself shows as images are served, so this never becomes a free way round the
download mode for the rest of the bundle; who may not see the product, or this version of it,
gets the product page's 404.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from sqlalchemy.orm import Session

from . import catalog
from .auth import Caller
from .blobs import BlobStore
from .errors import InvalidField, NotFound

#: the first bytes of each served type: a file whose bytes are not the image its name says is
#: not served (nosniff makes the browser trust the Content-Type we send)
MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}


@dataclass(frozen=True)
class CardImage:
    """An authorized card image, to read outside any transaction."""

    archive_sha256: str
    path: str
    sha256: str  # the file's certified digest
    content_type: str


def find_card_image(session: Session, caller: Caller, product: str, version: str,
                    path: str) -> CardImage:
    """The card image ``path`` of ``version`` of ``product``, if ``caller`` may see that card:
    the version on sale for everyone who sees the product, any version for the owning unit and
    operators (as the product page). 400 naming ``path`` for a path that cannot be a card image
    (absolute, ``..``, encoded, not PNG/JPEG); 404 for the rest."""
    p = catalog.get_product(session, product, caller)  # 404 naming product for who may not see
    shown = catalog.card_image_path(path)
    if shown is None or shown != path:
        raise InvalidField(f"path {path!r} is not a card image: name a .png, .jpg or .jpeg file "
                           "of the bundle by its relative path, without '..'", "path")
    v = catalog.get_version(p, version)
    if v not in catalog.visible_versions(p, caller):
        raise NotFound(f"product {p.name!r} has no version {version!r}", "version")
    digests = json.loads(v.file_digests)
    if path not in digests or path not in catalog.card_image_paths(v.readme):
        raise NotFound(f"the card of {p.name} {v.version} shows no image {path!r}", "path")
    content_type = catalog.CARD_IMAGE_TYPES[PurePosixPath(path).suffix.lower()]
    return CardImage(archive_sha256=v.sha256, path=path, sha256=digests[path],
                     content_type=content_type)


def read_card_image(blobs: BlobStore, image: CardImage) -> bytes:
    """Blocking (run it in an executor): the image's bytes from the version's archive, checked
    against the certified digest and against its type's signature."""
    with zipfile.ZipFile(io.BytesIO(blobs.get(image.archive_sha256))) as archive:
        data = archive.read(image.path)
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise NotFound(f"{image.path} failed its integrity check", "path")
    if not data.startswith(MAGIC[image.content_type]):
        raise NotFound(f"{image.path} is not a {image.content_type} file", "path")
    return data
