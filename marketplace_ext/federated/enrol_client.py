"""Enrolment on a unit's federated client (mixed into :class:`.client.FederatedClient`): the
unit's Ed25519 signing key, asking to join and waiting for approval, signed member keys, the
initiator's approvals, and wrapping the Paillier private key for members whose X25519 key is
signed by their unit (checked here, against the signing key pinned for that unit)."""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..client import MarketAPIError
from . import keys

if TYPE_CHECKING:
    from ..client import Market


class FederatedError(RuntimeError):
    """A federated step could not be done (no key yet, a round that does not come, ...)."""


class UnverifiedMemberKey(FederatedError):
    """A member's X25519 key is not signed by its unit's registered signing key (or that key
    is not the one this client pinned): no Paillier key was wrapped for it."""

    def __init__(self, message: str, units: list[str]):
        super().__init__(message)
        self.units = units


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EnrolmentMixin:
    """Needs ``market``, ``home``, ``signing_key_path``, ``poll``, ``unit``, ``project()``,
    ``projects()``, ``key_dir()``, ``private_key()``, ``holds_key()`` and ``_context()`` of
    :class:`.client.FederatedClient`."""

    market: Market
    home: Path
    signing_key_path: Path
    poll: float
    unit: str

    if TYPE_CHECKING:

        def project(self, project: int) -> dict: ...
        def projects(self) -> list[dict]: ...
        def partner_public(self, project: dict) -> str: ...
        def private_key(self, project: int | dict, wait: float = 0.0) -> Any: ...
        def holds_key(self, project: dict) -> bool: ...
        def _context(self, project: dict, unit: str) -> bytes: ...

    # --- the unit's signing key ---------------------------------------------------------------

    def unit_signing_key(self):
        """This unit's Ed25519 signing key, from ``signing_key_path`` (generated there, 0600,
        on first use)."""
        path = self.signing_key_path
        if path.exists():
            return keys.load_signing_key(path)
        key = keys.generate_signing_key()
        keys.save_signing_key(key, path)
        return key

    def ensure_unit_key(self) -> str:
        """Register this unit's signing key with the service unless the unit has one; returns
        its text form. Fails clearly if the unit registered another key (a publisher who does
        not hold the unit's key file)."""
        mine = keys.signing_public_text(self.unit_signing_key())
        r = self.market.http.get(
            self.market.url + f"api/fl/units/{self.unit}/signing-key", timeout=self.market.timeout
        )
        if r.status_code == 404:
            self.market.request(
                "PUT", f"fl/units/{self.unit}/signing-key", json={"ed25519_public_key": mine}
            )
            return mine
        if r.status_code != 200:
            raise FederatedError(
                f"reading unit {self.unit}'s signing key failed: {r.status_code} {r.text[:200]}"
            )
        registered = r.json()["ed25519_public_key"]
        if registered != mine:
            raise FederatedError(
                f"unit {self.unit} registered another signing key ({registered[:12]}...) than "
                f"the one in {self.signing_key_path} ({mine[:12]}...): use the unit's key file "
                "(signing_key= or $MARKET_FL_SIGNING_KEY), or ask an operator to register "
                "this one"
            )
        return mine

    def register_member_key(self, project: int | dict) -> dict:
        """Register this home's X25519 key for ``project``, signed with the unit's key (the
        unit must be an approved member)."""
        info = project if isinstance(project, dict) else self.project(project)
        self.ensure_unit_key()
        mine = self.partner_public(info)
        signature = keys.sign_member_key(self.unit_signing_key(), int(info["id"]), self.unit, mine)
        return self.market.request(
            "PUT",
            f"fl/projects/{info['id']}/members/{self.unit}",
            json={"x25519_public_key": mine, "x25519_signature": signature},
        )

    def _pins_path(self) -> Path:
        return self.home / "unit-keys.json"

    def _pins(self) -> dict[str, str]:
        path = self._pins_path()
        return json.loads(path.read_text()) if path.exists() else {}

    def trust_unit_key(self, unit: str, ed25519_public_key: str) -> None:
        """Pin ``unit``'s signing key (after checking it with the unit, e.g. when an operator
        replaced it): members' keys of that unit are then verified against it."""
        keys.decode_signing_public(ed25519_public_key)
        pins = {**self._pins(), unit: ed25519_public_key}
        write_private(self._pins_path(), json.dumps(pins, indent=1, sort_keys=True).encode())

    def verify_member(self, project: dict, waiting: dict) -> None:
        """Check that ``waiting``'s X25519 key is signed by its unit's registered signing key,
        and that this key is the one pinned for the unit (pinned on first sight); raises
        :class:`UnverifiedMemberKey` otherwise."""
        unit = waiting["unit"]
        registered = waiting.get("ed25519_public_key")
        if registered is None:
            raise UnverifiedMemberKey(
                f"unit {unit} has registered no signing key; no key is wrapped for it", [unit]
            )
        pinned = self._pins().get(unit)
        if pinned is None:
            self.trust_unit_key(unit, registered)
        elif pinned != registered:
            raise UnverifiedMemberKey(
                f"unit {unit}'s registered signing key changed ({pinned[:12]}... pinned, "
                f"{registered[:12]}... now); if unit {unit} confirms the new key, call "
                f"trust_unit_key({unit!r}, {registered!r})",
                [unit],
            )
        try:
            keys.verify_member_key(
                registered,
                waiting.get("x25519_signature"),
                int(project["id"]),
                unit,
                waiting["x25519_public_key"],
            )
        except keys.KeySignatureError as e:
            raise UnverifiedMemberKey(
                f"refusing to wrap the key for unit {unit}: {e}", [unit]
            ) from None

    # --- joining and approving ----------------------------------------------------------------

    def _listed(self, project: int) -> dict:
        found = [p for p in self.projects() if p["id"] == int(project)]
        if not found:
            raise FederatedError(f"no federated project {project}")
        return found[0]

    def join(self, project: int, wait: float = 0.0) -> dict:
        """Ask to join for this unit; once the unit is approved (at once if the initiator put
        it on the allow-list, else when the initiator's unit approves it: waiting up to
        ``wait`` seconds), register this home's X25519 key, signed with the unit's key.
        Returns the membership (``status``: pending, approved or refused)."""
        project = int(project)
        self.ensure_unit_key()
        listed = self._listed(project)
        if listed["membership"] in (None, "left"):
            member = self.market.request("POST", f"fl/projects/{project}/join", json={})
        elif listed["membership"] == "refused":
            raise FederatedError(
                f"the initiator's unit refused unit {self.unit} in project {project}"
            )
        else:
            member = {"status": listed["membership"]}
        deadline = time.monotonic() + wait
        while member["status"] == "pending":
            if time.monotonic() >= deadline:
                return self._own_member(project, member)
            time.sleep(self.poll)
            member = {"status": self._listed(project)["membership"]}
        if member["status"] != "approved":
            raise FederatedError(f"unit {self.unit} is {member['status']} in project {project}")
        info = self.project(project)
        current = next(m for m in info["members"] if m["unit"] == self.unit)
        if current["role"] != "initiator" and (
            current["x25519_public_key"] != self.partner_public(info)
            or current["x25519_signature"] is None
        ):
            return self.register_member_key(info)
        return current

    def _own_member(self, project: int, member: dict) -> dict:
        return {"unit": self.unit, "project": project, **member}

    def requests(self, project: int) -> list[dict]:
        """The units waiting for the initiator's approval."""
        return [
            m
            for m in self.project(project)["members"]
            if m["status"] == "pending" and m["left_at"] is None
        ]

    def approve(self, project: int, unit: str) -> dict:
        """Approve a unit that asked to join (the initiator's unit)."""
        return self.market.request(
            "POST",
            f"fl/projects/{int(project)}/members/{unit}/decision",
            json={"decision": "approve"},
        )

    def refuse(self, project: int, unit: str) -> dict:
        """Refuse a unit that asked to join (the initiator's unit)."""
        return self.market.request(
            "POST",
            f"fl/projects/{int(project)}/members/{unit}/decision",
            json={"decision": "refuse"},
        )

    def wrap_pending(self, project: int | dict, strict: bool = True) -> list[str]:
        """Wrap the Paillier private key for every approved member awaiting one whose X25519
        key is signed by its unit's registered signing key (needs the key in this home);
        returns the units served. Another member serving one first is fine. Members whose key
        does not verify get nothing: :class:`UnverifiedMemberKey` names them (a warning
        instead if not ``strict``)."""
        info = project if isinstance(project, dict) else self.project(project)
        if not self.holds_key(info):
            return []
        private = self.private_key(info)
        found = self.market.request("GET", f"fl/projects/{info['id']}/keys")
        served, refused = [], []
        for waiting in found["awaiting"]:
            try:
                self.verify_member(info, waiting)
            except UnverifiedMemberKey as e:
                refused.append(str(e))
                continue
            wrapped = keys.wrap_private_key(
                private,
                keys.decode_public(waiting["x25519_public_key"]),
                context=self._context(info, waiting["unit"]),
            )
            try:
                self.market.request(
                    "POST",
                    f"fl/projects/{info['id']}/keys",
                    json={
                        "unit": waiting["unit"],
                        "x25519_public_key": waiting["x25519_public_key"],
                        "key_fingerprint": info["key_fingerprint"],
                        "wrapped_key": wrapped,
                    },
                )
            except MarketAPIError as e:
                if e.status != 409:  # 409: served by someone else, or the key changed meanwhile
                    raise
                continue
            served.append(waiting["unit"])
        if refused:
            message = "; ".join(refused)
            if strict:
                raise UnverifiedMemberKey(
                    message, [w["unit"] for w in found["awaiting"] if w["unit"] not in served]
                )
            warnings.warn(message, stacklevel=2)
        return served
