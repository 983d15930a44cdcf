"""The client's side of split decryption (:mod:`.split_decrypt`), mixed into
:class:`~marketplace_ext.federated.client.FederatedClient`::

    mean = fl.split_mean_update(project, number, wait=600)   # instead of fl.mean_update(...)
    result = fl.run_round(project_id, train, split=True)

Each member decrypts the slice of the aggregate it owns, seals it under the members' slice key
and posts it; it then fetches the other slices and reassembles the mean. After ``takeover``
seconds a member decrypts (and posts) the slices still missing itself; a slice that does not
open is decrypted locally. Every member ends with the same integers, hence the same mean, as a
whole decryption.
"""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

import numpy as np

from ..client import MarketAPIError
from . import packing, split_decrypt
from .enrol_client import FederatedError, write_private

#: threads decrypting a member's slice (gmpy2 releases the GIL: both cores)
SLICE_WORKERS = 2


class SliceClientMixin:
    """Split decryption for :class:`FederatedClient` (``market``, ``unit``, ``poll``, ``spec``,
    ``private_key``, ``key_dir`` and ``_aggregate_bytes`` come from it)."""

    market: Any
    poll: float
    #: what the last :meth:`split_mean_update` did: slices decrypted here, fetched from other
    #: members, taken over, and opened-but-refused ones decrypted locally
    last_split: dict[str, list[int]]

    def _slices_path(self, project: dict, number: int) -> str:
        return f"fl/projects/{project['id']}/rounds/{int(number)}/slices"

    def slices(self, project: dict, number: int) -> dict:
        """The slice layout of round ``number``'s aggregate and what members posted."""
        return self.market.request("GET", self._slices_path(project, number))

    def fetch_slice(self, project: dict, number: int, index: int) -> bytes:
        """A posted slice's sealed bytes (checked against their digest)."""
        r = self.market.http.get(
            self.market.url + "api/" + self._slices_path(project, number) + f"/{int(index)}",
            timeout=self.market.timeout,
        )
        if r.status_code != 200:
            raise MarketAPIError.from_response(r)
        if hashlib.sha256(r.content).hexdigest() != r.headers["X-Content-SHA256"]:
            raise FederatedError(f"slice {index} of round {number} arrived damaged")
        return r.content

    def post_slice(self, project: dict, number: int, index: int, sealed: bytes) -> dict | None:
        """Post a sealed slice; None when another member posted it first (the first wins)."""
        try:
            return self.market.request(
                "POST",
                self._slices_path(project, number) + f"/{int(index)}",
                data=sealed,
                headers={"Content-Type": "application/octet-stream"},
            )
        except MarketAPIError as e:
            if e.status == 409 and e.field == "slice":
                return None
            raise

    def split_mean_update(
        self, project: dict, number: int, wait: float = 0.0, takeover: float = 30.0
    ) -> np.ndarray:
        """The decrypted weighted mean update of round ``number`` by split decryption (cached
        in the home like :meth:`mean_update`'s): decrypt and post this unit's slices, fetch
        the others', take over the slices still missing after ``takeover`` seconds."""
        path = self.key_dir(project) / f"round-{int(number)}.npy"
        if path.exists():
            return np.load(path)
        data, headers = self._aggregate_bytes(project, number, wait)
        spec: packing.PackSpec = self.spec(project)
        ciphertexts = packing.ciphertexts_from_bytes(spec, data)
        info = self.slices(project, number)
        sha = headers["X-Content-SHA256"]
        if info["aggregate_sha256"] != sha:
            raise FederatedError(f"the slices of round {number} are for another aggregate")
        plan = split_decrypt.layout(len(ciphertexts), info["units"])
        if plan.count != len(info["slices"]):
            raise FederatedError(
                f"the service lists {len(info['slices'])} slices for round "
                f"{number}; the layout has {plan.count}"
            )
        private = self.private_key(project)
        key = split_decrypt.slice_key(private)
        width = split_decrypt.plaintext_width(spec)
        report: dict[str, list[int]] = {
            "decrypted": [],
            "fetched": [],
            "taken_over": [],
            "refused": [],
        }
        parts: dict[int, list[int]] = {}

        def associated(i: int) -> bytes:
            return split_decrypt.associated_data(
                int(project["id"]), int(number), int(info["attempt"]), sha, i, plan.count
            )

        def decrypt(i: int, post: bool) -> None:
            parts[i] = split_decrypt.decrypt_slice(
                spec, ciphertexts, private, plan, i, workers=SLICE_WORKERS
            )
            report["decrypted"].append(i)
            if post:
                self.post_slice(
                    project,
                    number,
                    i,
                    split_decrypt.seal_slice(key, associated(i), parts[i], width),
                )

        posted = {s["slice"] for s in info["slices"] if s["posted"]}
        for i in plan.slices_of(self.unit):
            if i not in posted:
                decrypt(i, post=True)
        started = time.monotonic()
        while True:
            for entry in self.slices(project, number)["slices"]:
                i = entry["slice"]
                if i in parts or not entry["posted"]:
                    continue
                start, stop = plan.bounds(i)
                try:
                    parts[i] = split_decrypt.open_slice(
                        key,
                        associated(i),
                        self.fetch_slice(project, number, i),
                        stop - start,
                        width,
                        spec.n,
                    )
                    report["fetched"].append(i)
                except split_decrypt.SliceError:
                    report["refused"].append(i)
                    decrypt(i, post=False)  # never depend on another member for correctness
            missing = [i for i in range(plan.count) if i not in parts]
            if not missing:
                break
            if time.monotonic() - started >= takeover:
                for i in missing:
                    report["taken_over"].append(i)
                    decrypt(i, post=True)
                break
            time.sleep(self.poll)
        mean = split_decrypt.reassemble(
            spec, plan, parts, int(info["total_weight"]), int(info["parties"])
        )
        self.last_split = report
        buf = io.BytesIO()
        np.save(buf, mean)
        write_private(path, buf.getvalue())
        return mean
