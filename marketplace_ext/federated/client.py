"""The federated-learning client of a unit: the initiator's and every partner's side.

Built on :class:`marketplace_ext.client.Market` (the hub token of a notebook), it keeps a unit's
secrets in the user's home, never on the service: per project (keyed by the Paillier key's
fingerprint) a directory ``~/.grid-market/fl/<fingerprint[:16]>/`` (0700) holding

* ``partner.key``: the unit's X25519 private key (0600); its public half is registered with
  the service so that a member holding the Paillier private key can wrap it for this unit;
* ``paillier.json``: the Paillier private key p, q (0600), generated here by the initiator or
  unwrapped from what another member's client posted;
* ``round-<n>.npy``: the decrypted mean update of each published round (to rebuild the global
  model without decrypting again), and ``model/``: the project's initial model bundle;

and, for all projects, ``unit-signing.key``: the unit's Ed25519 signing key (0600; another
path with ``signing_key=`` or ``$MARKET_FL_SIGNING_KEY``, e.g. a file the unit's publishers
share). Its public half is registered with the service once per unit; it signs the unit's
X25519 keys, and every client checks that signature before it wraps the Paillier key for a
member. ``unit-keys.json`` pins the signing keys of the other units this client has seen.

The service never sees a private key, a plaintext update or a plaintext aggregate: updates are
clipped, quantized, packed and encrypted here (:mod:`marketplace_ext.federated.packing`) and
only ciphertexts are uploaded. A typical partner round::

    fl = FederatedClient()
    fl.join(project_id, wait=3600)               # until the initiator's unit approves
    result = fl.run_round(project_id, train)     # train(global_vector) -> (delta, weight)

and the initiator approves those who asked (or names them in ``allow_units`` when opening)::

    fl.requests(project_id)                      # units waiting for approval
    fl.approve(project_id, "b")

The model is rebuilt by every party as ``initial weights + sum of the decrypted mean updates``
in float64, from identical aggregates: every party holds the same global model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..client import Market
from . import keys, packing
from .enrol_client import EnrolmentMixin, FederatedError, UnverifiedMemberKey, write_private
from .slice_client import SliceClientMixin

__all__ = ["FederatedClient", "FederatedError", "RoundResult", "UnverifiedMemberKey", "bundle_zip"]

DEFAULT_HOME = Path("~/.grid-market/fl")
ENCRYPT_CHUNK = 16  # ciphertexts per progress step
MAX_POOL = 4096  # obfuscators kept ready: 2 MiB for 2048-bit keys
DECRYPT_WORKERS = 2  # gmpy2 releases the GIL: decryption uses both cores


@dataclass(frozen=True)
class RoundResult:
    """What one round left this party with."""

    number: int
    attempt: int
    weight: int
    clipped: int
    parties: int
    total_weight: int
    mean_update: np.ndarray  # the decrypted weighted mean of the round's updates
    global_vector: np.ndarray  # the new global model (float64)
    aggregate_sha256: str
    log_index: int | None


def _progress(total: int, desc: str, unit: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", leave=True)


class _UploadBody:
    """A bytes body that requests sends with a Content-Length, advancing a progress bar."""

    def __init__(self, data: bytes, bar):
        self._buf = io.BytesIO(data)
        self._len = len(data)
        self._bar = bar

    def __len__(self) -> int:
        return self._len

    def read(self, size: int = -1) -> bytes:
        chunk = self._buf.read(size)
        if self._bar is not None and chunk:
            self._bar.update(len(chunk))
        return chunk


def _unit_list(units: list[str] | str | None) -> list[str]:
    if units is None:
        return []
    if isinstance(units, str):  # "b,c" or "bc"-style notebook parameters: comma-separated
        return [u.strip() for u in units.split(",") if u.strip()]
    return list(units)


def bundle_zip(directory: Path | str) -> bytes:
    """The upload form of a :func:`model.save_bundle` directory: a zip of ``model.json`` and
    ``weights.pt`` (fixed timestamps, so the same bundle gives the same bytes)."""
    directory = Path(directory)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("model.json", "weights.pt"):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, (directory / name).read_bytes())
    return out.getvalue()


class FederatedClient(SliceClientMixin, EnrolmentMixin):
    """One unit's client; ``home`` defaults to ``$MARKET_FL_HOME`` or ``~/.grid-market/fl``."""

    def __init__(
        self,
        market: Market | None = None,
        home: Path | str | None = None,
        progress: bool = True,
        poll: float = 1.0,
        signing_key: Path | str | None = None,
    ):
        self.market = market or Market()
        self.home = Path(home or os.environ.get("MARKET_FL_HOME") or DEFAULT_HOME).expanduser()
        self.signing_key_path = Path(
            signing_key or os.environ.get("MARKET_FL_SIGNING_KEY") or self.home / "unit-signing.key"
        ).expanduser()
        self.progress = progress
        self.poll = poll
        self._unit: str | None = None
        self._private: dict[str, Any] = {}
        self._encryptors: dict[str, packing.Encryptor] = {}

    def __repr__(self) -> str:
        return f"FederatedClient({self.market!r}, home={str(self.home)!r})"

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def unit(self) -> str:
        if self._unit is None:
            me = self.market.me()
            if not me.get("unit"):
                raise FederatedError(f"{me['name']} is in no unit")
            self._unit = me["unit"]["slug"]
        return self._unit

    def project(self, project: int) -> dict:
        return self.market.request("GET", f"fl/projects/{int(project)}")

    def projects(self) -> list[dict]:
        return self.market.request("GET", "fl/projects")["projects"]

    def key_dir(self, project: dict) -> Path:
        path = self.home / project["key_fingerprint"][:16]
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def _context(self, project: dict, unit: str) -> bytes:
        # binds a wrapped key to one project, one recipient unit and one Paillier key
        return f"grid-market/fl/{project['id']}/{unit}/{project['key_fingerprint']}".encode()

    @staticmethod
    def spec(project: dict) -> packing.PackSpec:
        return packing.PackSpec.from_json(project["pack"])

    @staticmethod
    def public_key(project: dict):
        return keys.public_key_from_json(project["public_key"])

    # --- opening a project (the initiator) ----------------------------------------------------

    def open_project(
        self,
        name: str,
        model_dir: Path | str,
        *,
        rounds: int,
        quorum: int,
        deadline_seconds: int,
        min_updates: int = 2,
        key_size: int = 2048,
        title: str | None = None,
        task: str = "binary classification",
        bits: int = 16,
        clip: float = 1.0,
        max_parties: int = 10,
        max_weight: int = 100_000,
        dp: dict | None = None,
        allow_units: list[str] | str | None = None,
        products: list[str] | None = None,
        pool: int = 0,
        contribution_measure: str = "weight",
    ) -> dict:
        """Generate the project's Paillier key pair here, keep the private key in the home
        (0600) and open the project with the public key and the model bundle in ``model_dir``
        (see :func:`marketplace_ext.federated.model.save_bundle`). Units in ``allow_units``
        are approved as soon as they join; any other waits for :meth:`approve`. ``products``:
        the data products (offering ``federated``) it is opened on; ``pool``: whole points your
        unit escrows as the reward pool; ``contribution_measure``: ``weight`` (data weight) or
        the opt-in ``loo_weight`` (leave-one-out: members can learn each unit's update).
        Returns the project."""
        import base64

        public_key, private_key = keys.generate_paillier_keypair(key_size)
        fingerprint = keys.key_fingerprint(public_key)
        # saved before the project exists: a project whose key is lost could never decrypt
        self._save_private_key({"key_fingerprint": fingerprint}, private_key)
        body = {
            "name": name,
            "title": title or name,
            "task": task,
            "rounds": rounds,
            "quorum": quorum,
            "min_updates": min_updates,
            "deadline_seconds": deadline_seconds,
            "key_size": key_size,
            "public_key": keys.public_key_to_json(public_key),
            "pack": {
                "bits": bits,
                "clip": clip,
                "max_parties": max_parties,
                "max_weight": max_weight,
            },
            "dp": dp,
            "model": base64.b64encode(bundle_zip(model_dir)).decode(),
            "allow_units": _unit_list(allow_units),
            "products": list(products or []),
            "pool": int(pool),
            "contribution_measure": contribution_measure,
        }
        project = self.market.request("POST", "fl/projects", json=body)
        self.ensure_partner_key(project)
        return project

    def start(self, project: int) -> dict:
        """Open round 1 (the initiator's unit, once enough units joined)."""
        return self.market.request("POST", f"fl/projects/{int(project)}/rounds")

    # --- keys ---------------------------------------------------------------------------------

    def _save_private_key(self, project: dict, private_key) -> None:
        path = self.key_dir(project) / "paillier.json"
        write_private(path, json.dumps({"p": str(private_key.p), "q": str(private_key.q)}).encode())

    def ensure_partner_key(self, project: dict):
        """This unit's X25519 key for ``project`` (generated and saved 0600 on first use)."""
        path = self.key_dir(project) / "partner.key"
        if path.exists():
            return keys.load_partner_key(path)
        key = keys.generate_partner_key()
        keys.save_partner_key(key, path)
        return key

    def partner_public(self, project: dict) -> str:
        return keys.encode_public(keys.partner_public_bytes(self.ensure_partner_key(project)))

    def private_key(self, project: int | dict, wait: float = 0.0):
        """The Paillier private key: from the home, else unwrapped from what a member posted
        for this unit (waiting up to ``wait`` seconds for one), then saved in the home."""
        info = project if isinstance(project, dict) else self.project(project)
        fingerprint = info["key_fingerprint"]
        if fingerprint in self._private:
            return self._private[fingerprint]
        public_key = self.public_key(info)
        path = self.key_dir(info) / "paillier.json"
        deadline = time.monotonic() + wait
        while not path.exists():
            found = self.market.request("GET", f"fl/projects/{info['id']}/keys")
            if found["wrapped_key"] is not None:
                private = keys.unwrap_private_key(
                    found["wrapped_key"],
                    self.ensure_partner_key(info),
                    public_key=public_key,
                    context=self._context(info, self.unit),
                )
                self._save_private_key(info, private)
                break
            if time.monotonic() >= deadline:
                raise FederatedError(
                    f"no wrapped key for unit {self.unit} in project "
                    f"{info['id']} yet: a member's client must wrap it"
                )
            time.sleep(self.poll)
        import phe

        fields = json.loads(path.read_text())
        private = phe.PaillierPrivateKey(public_key, int(fields["p"]), int(fields["q"]))
        self._private[fingerprint] = private
        return private

    def holds_key(self, project: dict) -> bool:
        return (self.key_dir(project) / "paillier.json").exists()

    # --- the model ----------------------------------------------------------------------------

    def model_dir(self, project: dict) -> Path:
        """The project's initial model bundle, downloaded once into the home."""
        target = self.key_dir(project) / "model"
        if not (target / "model.json").exists():
            r = self.market.http.get(
                self.market.url + f"api/fl/projects/{project['id']}/model",
                timeout=self.market.timeout,
            )
            if r.status_code >= 400:
                raise FederatedError(f"model download failed: {r.status_code} {r.text[:200]}")
            if hashlib.sha256(r.content).hexdigest() != project["model"]["sha256"]:
                raise FederatedError("the model bundle does not match the project's sha256")
            target.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
                for name in ("model.json", "weights.pt"):
                    (target / name).write_bytes(zf.read(name))
        return target

    def initial_model(self, project: dict):
        """``(torch module, spec, flat float64 vector)`` of the project's initial model."""
        from .model import flatten_state, load_bundle

        module, spec = load_bundle(self.model_dir(project))
        return module, spec, flatten_state(module, np.float64)

    def global_vector(self, project: dict, after_round: int) -> np.ndarray:
        """The global model after ``after_round`` published rounds (0: the initial model)."""
        _, _, vector = self.initial_model(project)
        for n in range(1, after_round + 1):
            vector = vector + self.mean_update(project, n)
        return vector

    # --- rounds -------------------------------------------------------------------------------

    def round(self, project: int, number: int) -> dict:
        return self.market.request("GET", f"fl/projects/{int(project)}/rounds/{int(number)}")

    def wait_for_round(
        self, project: int, number: int | None = None, timeout: float = 600, wrap: bool = True
    ) -> dict | None:
        """Wait until round ``number`` (any, if None) is open; returns it, or None when the
        project finished first. While waiting, wraps keys for members awaiting one."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.project(project)
            rnd = info["round"]
            if rnd and rnd["state"] == "open" and (number is None or rnd["number"] == number):
                return rnd
            if info["state"] == "finished" or (
                number is not None and rnd and rnd["number"] > number
            ):
                return None
            if wrap:
                self.wrap_pending(info, strict=False)
            if time.monotonic() >= deadline:
                raise FederatedError(
                    f"round {number or 'any'} of project {project} did not "
                    f"open within {timeout:.0f}s"
                )
            time.sleep(self.poll)

    def encryptor(self, project: dict) -> packing.Encryptor:
        """The project's encryptor, its pool of obfuscators (r^n mod n^2, one per ciphertext of
        an update) filling in a background thread from the first call: started before local
        training, the update's encryption then mostly takes ready obfuscators."""
        fingerprint = project["key_fingerprint"]
        encryptor = self._encryptors.get(fingerprint)
        if encryptor is None:
            spec = self.spec(project)
            encryptor = packing.Encryptor(
                self.public_key(project),
                self.private_key(project),
                pool_size=min(spec.ciphertexts, MAX_POOL),
            )
            encryptor.start_pool()
            self._encryptors[fingerprint] = encryptor
        return encryptor

    def close(self) -> None:
        """Stop the background obfuscator pools."""
        for encryptor in self._encryptors.values():
            encryptor.stop()
        self._encryptors.clear()

    def encrypt_update(
        self, project: dict, vector: np.ndarray, weight: int
    ) -> packing.PackedUpdate:
        """Clip, quantize, pack and encrypt ``vector`` weighted by ``weight`` (with the private
        key's CRT speed-up), showing progress."""
        spec = self.spec(project)
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (spec.length,):
            raise FederatedError(
                f"the update has shape {vector.shape}; the project's model has {spec.length} values"
            )
        step = spec.slots * ENCRYPT_CHUNK
        bar = _progress(spec.ciphertexts, "encrypt", "ct", self.progress)
        ciphertexts, clipped = [], 0
        encryptor = self.encryptor(project)
        # slots are laid out in order, so packing a slice that starts on a plaintext boundary
        # with a spec of the slice's length gives exactly those plaintexts' ciphertexts
        for start in range(0, spec.length, step):
            part = vector[start : start + step]
            sub = dataclasses.replace(spec, length=len(part))
            packed = packing.pack_update(sub, part, weight, encryptor)
            ciphertexts.extend(packed.ciphertexts)
            clipped += packed.clipped
            if bar is not None:
                bar.update(len(packed.ciphertexts))
        if bar is not None:
            bar.close()
        return packing.PackedUpdate(ciphertexts, clipped, int(weight))

    def upload(self, project: dict, number: int, packed: packing.PackedUpdate) -> dict:
        data = packing.ciphertexts_to_bytes(self.spec(project), packed.ciphertexts)
        bar = _progress(len(data), "upload", "B", self.progress)
        try:
            return self.market.request(
                "POST",
                f"fl/projects/{project['id']}/rounds/{int(number)}/updates",
                params={
                    "weight": packed.weight,
                    "clipped": packed.clipped,
                    "key_fingerprint": project["key_fingerprint"],
                },
                data=_UploadBody(data, bar),
                headers={"Content-Type": "application/octet-stream"},
            )
        finally:
            if bar is not None:
                bar.close()

    def submit(self, project: int | dict, number: int, vector: np.ndarray, weight: int) -> dict:
        """Encrypt and upload this unit's update for round ``number``; returns the receipt
        (sha256 and log index of the certified contribution)."""
        info = project if isinstance(project, dict) else self.project(project)
        packed = self.encrypt_update(info, vector, weight)
        receipt = self.upload(info, number, packed)
        return {**receipt, "packed": packed}

    def mean_update(self, project: dict, number: int, wait: float = 0.0) -> np.ndarray:
        """The decrypted weighted mean update of round ``number`` (cached in the home)."""
        path = self.key_dir(project) / f"round-{int(number)}.npy"
        if path.exists():
            return np.load(path)
        data, headers = self._aggregate_bytes(project, number, wait)
        spec = self.spec(project)
        mean = packing.unpack_aggregate(
            spec,
            packing.ciphertexts_from_bytes(spec, data),
            self.private_key(project),
            int(headers["X-FL-Total-Weight"]),
            int(headers["X-FL-Parties"]),
            workers=DECRYPT_WORKERS,
        )
        buf = io.BytesIO()
        np.save(buf, mean)
        write_private(path, buf.getvalue())
        return mean

    def _aggregate_bytes(self, project: dict, number: int, wait: float):
        deadline = time.monotonic() + wait
        url = self.market.url + f"api/fl/projects/{project['id']}/rounds/{int(number)}/aggregate"
        while True:
            r = self.market.http.get(url, timeout=self.market.timeout)
            if r.status_code == 200:
                if hashlib.sha256(r.content).hexdigest() != r.headers["X-Content-SHA256"]:
                    raise FederatedError(f"aggregate of round {number} arrived damaged")
                return r.content, r.headers
            if r.status_code != 404 or time.monotonic() >= deadline:
                raise FederatedError(
                    f"no aggregate for round {number}: {r.status_code} {r.text[:200]}"
                )
            time.sleep(self.poll)

    def wait_for_aggregate(
        self,
        project: int,
        number: int,
        timeout: float = 600,
        attempt: int | None = None,
        resubmit: Callable[[dict], dict] | None = None,
    ) -> dict:
        """Wait until round ``number`` is published; returns the round. If the attempt this
        unit sent its update to (``attempt``) is void and a new one opened, ``resubmit(round)``
        is called for the new attempt (the update still applies: same global model)."""
        deadline = time.monotonic() + timeout
        while True:
            rnd = self.round(project, number)
            if rnd["state"] == "published":
                return rnd
            if (
                resubmit is not None
                and rnd["state"] == "open"
                and rnd["attempt"] != attempt
                and not any(u["unit"] == self.unit for u in rnd["updates"])
            ):
                attempt = resubmit(rnd)["attempt"]
            self.wrap_pending(project, strict=False)
            if time.monotonic() >= deadline:
                raise FederatedError(
                    f"round {number} of project {project} was not published within {timeout:.0f}s"
                )
            time.sleep(self.poll)

    def run_round(
        self,
        project: int,
        train: Callable[[np.ndarray], tuple[np.ndarray, int]],
        number: int | None = None,
        timeout: float = 600,
        split: bool = False,
        takeover: float = 30.0,
    ) -> RoundResult | None:
        """One round end to end: wait for it to open, rebuild the global model it starts from,
        ``train(global_vector) -> (update, weight)`` locally, encrypt and upload the update,
        wait for the aggregate, decrypt it and return the new global model. None when the
        project finished before the round opened. ``split``: the members share the
        decryption (:meth:`split_mean_update`, taking over missing slices after ``takeover``
        seconds) instead of each decrypting the whole aggregate."""
        rnd = self.wait_for_round(project, number, timeout)
        if rnd is None:
            return None
        info = self.project(project)
        self.encryptor(info)  # obfuscators are computed while the unit trains
        base = self.global_vector(info, rnd["base_round"])
        update, weight = train(base.copy())
        packed = self.encrypt_update(info, update, weight)
        receipt = self.upload(info, rnd["number"], packed)

        def resubmit(reopened: dict) -> dict:
            return self.upload(info, reopened["number"], packed)

        done = self.wait_for_aggregate(
            project, rnd["number"], timeout, receipt["attempt"], resubmit
        )
        if split:
            mean = self.split_mean_update(info, rnd["number"], wait=timeout, takeover=takeover)
        else:
            mean = self.mean_update(info, rnd["number"], wait=timeout)
        aggregate = done["aggregate"]
        return RoundResult(
            number=rnd["number"],
            attempt=done["attempt"],
            weight=packed.weight,
            clipped=packed.clipped,
            parties=aggregate["parties"],
            total_weight=aggregate["total_weight"],
            mean_update=mean,
            global_vector=base + mean,
            aggregate_sha256=aggregate["sha256"],
            log_index=receipt.get("log_index"),
        )

    # --- contributions: leave-one-out evaluations (federated.economy) -------------------------

    def loo_mean(self, project: dict, number: int, unit: str) -> np.ndarray:
        """The decrypted weighted mean update of round ``number`` without ``unit``'s update
        (the service adds the other ciphertexts; a round needs three updates or more)."""
        r = self.market.http.get(
            self.market.url + f"api/fl/projects/{project['id']}/rounds/{int(number)}/loo/{unit}",
            timeout=self.market.timeout,
        )
        if r.status_code != 200:
            raise FederatedError(
                f"no leave-one-out sum of round {number} without {unit}: "
                f"{r.status_code} {r.text[:200]}"
            )
        spec = self.spec(project)
        return packing.unpack_aggregate(
            spec,
            packing.ciphertexts_from_bytes(spec, r.content),
            self.private_key(project),
            int(r.headers["X-FL-Total-Weight"]),
            int(r.headers["X-FL-Parties"]),
            workers=DECRYPT_WORKERS,
        )

    def evaluate_contributions(
        self,
        project: int,
        number: int,
        evaluate: Callable[[np.ndarray], float],
        metric: str = "auc",
    ) -> dict:
        """Evaluate on this unit's own validation data (``evaluate(global_vector) -> metric``)
        the model after round ``number`` and, for every other unit that sent an update, the
        model without that unit's update; posts them as ``metric`` and ``loo.<unit>`` (the
        inputs of the contribution measure) and returns them. A project that did not opt in to
        ``loo_weight``, or a round of fewer than three updates, has no leave-one-out sums:
        then only ``metric`` is evaluated and posted."""
        info = self.project(project)
        base = self.global_vector(info, number - 1)
        rnd = self.round(project, number)
        metrics = {metric: evaluate(base + self.mean_update(info, number))}
        units = {u["unit"] for u in rnd["updates"]}
        if info.get("contribution_measure") != "loo_weight" or len(units) < 3:
            units = set()
        for unit in sorted(units - {self.unit}):
            metrics[f"loo.{unit}"] = evaluate(base + self.loo_mean(info, number, unit))
        self.post_metrics(project, number, metrics)
        return metrics

    def contributions(self, project: int) -> dict:
        """The pool, the contribution estimate so far and the settlement (if any)."""
        return self.market.request("GET", f"fl/projects/{int(project)}/contributions")

    # --- metrics ------------------------------------------------------------------------------

    def post_metrics(self, project: int, number: int, metrics: dict) -> dict:
        clean = {
            k: (None if v is None or (isinstance(v, float) and not np.isfinite(v)) else float(v))
            for k, v in metrics.items()
        }
        return self.market.request(
            "POST",
            f"fl/projects/{int(project)}/metrics",
            json={"round": int(number), "metrics": clean},
        )

    def metrics(self, project: int) -> list[dict]:
        return self.market.request("GET", f"fl/projects/{int(project)}/metrics")["metrics"]
