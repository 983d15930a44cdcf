"""``market witness``: what any unit runs to keep the log honest.

It keeps, in its state directory, its own Ed25519 key and the last checkpoint it co-signed.
Each run fetches the latest checkpoint, checks the log's signature and a consistency proof
from the stored size, refuses a rollback or a fork loudly (exit status 3), co-signs
(C2SP tlog-cosignature/v1) and posts the cosignature to the log.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

from . import merkle
from .client import Market


class WitnessState:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def key_file(self) -> Path:
        return self.root / "witness.key"

    @property
    def checkpoint_file(self) -> Path:
        return self.root / "checkpoint.json"

    def init(self, name: str) -> str:
        """Create the witness key (once); returns its vkey for the log operator's config."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.key_file.exists():
            skey, _vkey = merkle.generate_key(name)
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(skey + "\n")
        key_name, private = merkle.parse_skey(self.key_file.read_text().strip())
        return merkle.format_vkey(key_name, private.public_key(), alg=merkle.ALG_COSIGNATURE_V1)

    def key(self):
        if not self.key_file.exists():
            raise merkle.WitnessError(f"no witness key in {self.root}: run with --init first")
        return merkle.parse_skey(self.key_file.read_text().strip())

    def load(self) -> dict | None:
        if not self.checkpoint_file.exists():
            return None
        return json.loads(self.checkpoint_file.read_text())

    def save(self, record: dict) -> None:
        tmp = self.checkpoint_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.checkpoint_file)


def run_once(market: Market, state: WitnessState, log_key: str | None = None) -> dict:
    """One witnessing round; returns what happened. Raises RollbackError/ForkError."""
    name, private = state.key()
    stored = state.load()
    pinned = log_key or (stored or {}).get("log_key")
    latest = market.request("GET", "log/checkpoint")
    if pinned is None:
        pinned = latest["log_key"]  # first contact: trust on first use, then pinned
    checkpoint, _ = merkle.open_checkpoint(latest["checkpoint"], [merkle.parse_vkey(pinned)])
    old = merkle.parse_checkpoint(stored["checkpoint"]) if stored else None
    proof: list[bytes] = []
    if old is not None and old.size < checkpoint.size:
        reply = market.request("GET", "log/proof/consistency",
                               params={"old": old.size, "new": checkpoint.size})
        proof = [base64.b64decode(h) for h in reply["proof"]]
    merkle.witness_check(old, checkpoint, proof)
    now = int(time.time())
    note = merkle.cosign_note(latest["checkpoint"], name, private, now)
    result = market.request("POST", "log/cosignatures", json={"cosignature": note})
    body, _sigs = merkle.split_note(latest["checkpoint"])
    state.save({"checkpoint": body, "log_key": pinned, "cosigned_at": now})
    return {"size": checkpoint.size, "previous": old.size if old else None,
            "final": result["final"], "witnesses": result["witnesses"]}

