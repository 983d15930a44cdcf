"""Client-side verification against the certification log: a downloaded file, an order.

A *proof bundle* holds everything needed offline: the log entry (its public part), its
index, an inclusion proof, the signed checkpoint it leads to and, for a party to the entry, the
entry's details and salt. Verification checks, in order: the checkpoint's signature with the
log key the verifier trusts, the entry's inclusion under that checkpoint's root, that the
details match the entry's commitment, and that the entry says what the user claims (this
file's sha256 in this version). Without the details (not a party) only the entry's type and
time can be checked (:func:`verify_entry`).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from . import logentry, merkle
from .client import Market


class VerificationFailed(RuntimeError):
    """The file, order or proof does not check out; the message says which step failed."""


def fetch_proof_bundle(market: Market, index: int) -> dict:
    """Entry ``index``, the latest checkpoint and the inclusion proof between them."""
    checkpoint = market.request("GET", "log/checkpoint")
    if checkpoint["size"] <= index:
        raise VerificationFailed(
            f"entry {index} is not in the latest checkpoint (size {checkpoint['size']}) yet; "
            "try again in a moment")
    entry = market.log_entry(index)
    proof = market.request("GET", "log/proof/inclusion",
                           params={"index": index, "size": checkpoint["size"]})
    bundle = {"index": index, "entry": entry["data"], "checkpoint": checkpoint["checkpoint"],
              "proof": proof["proof"], "log_key": checkpoint["log_key"]}
    if entry["data"] is None:  # a legacy entry of other units: only its leaf hash is public
        bundle["leaf_hash"] = entry["leaf_hash"]
    if entry.get("details") is not None:
        bundle.update(details=entry["details"], salt=entry["salt"])
    return bundle


def check_public(bundle: dict, log_key: str) -> tuple[dict, bool]:
    """Verify a proof bundle against the trusted ``log_key`` (a vkey).

    Returns ``(statement, complete)``: the whole statement when the bundle carries the
    details (a party's bundle) or is a legacy entry, else the public part (type, time,
    commitment) and False. A legacy entry a stranger may not read has no statement at all:
    its leaf hash is checked and ``{}`` returned.
    """
    key = merkle.parse_vkey(log_key)
    try:
        checkpoint, _opened = merkle.open_checkpoint(bundle["checkpoint"], [key])
    except merkle.MerkleError as e:
        raise VerificationFailed(f"checkpoint signature: {e}") from e
    data = bundle["entry"].encode() if bundle.get("entry") is not None else None
    leaf = (merkle.leaf_hash(data) if data is not None
            else base64.b64decode(bundle.get("leaf_hash") or ""))
    proof = [base64.b64decode(h) for h in bundle["proof"]]
    try:
        merkle.check_inclusion(leaf, bundle["index"], checkpoint.size, proof, checkpoint.root)
    except merkle.MerkleError as e:
        raise VerificationFailed(f"inclusion proof: {e}") from e
    if data is None:
        return {}, False
    try:
        return logentry.open_statement(data, bundle.get("details"), bundle.get("salt"))
    except logentry.EntryMismatch as e:
        raise VerificationFailed(f"entry details: {e}") from e


def check_bundle(bundle: dict, log_key: str) -> dict:
    """Verify a proof bundle and return the whole statement; fails when the bundle lacks the
    details (the caller is not a party to the entry)."""
    statement, complete = check_public(bundle, log_key)
    if not complete:
        raise VerificationFailed(
            f"log entry {bundle['index']} is private: only its parties (and operators) get the "
            "details needed to check what it says")
    return statement


def verify_entry(bundle: dict, log_key: str, entry_type: str | None = None) -> dict:
    """Anyone: an entry (of ``entry_type``, if given) is at this index under a signed
    checkpoint. Returns what could be checked: the statement, or the public part."""
    statement, _complete = check_public(bundle, log_key)
    if entry_type is not None and statement.get("type") != entry_type:
        found = statement.get("type") or "an entry whose type is not public"
        raise VerificationFailed(f"log entry {bundle['index']} is {found}, not {entry_type}")
    return statement


def verify_file(path: Path, bundle: dict, log_key: str, product: str, version: str) -> dict:
    """The file at ``path`` is a file of ``product`` ``version`` as certified in the log."""
    statement = check_bundle(bundle, log_key)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if statement.get("type") not in ("version_submitted", "download"):
        raise VerificationFailed(f"log entry {bundle['index']} is a {statement.get('type')} "
                                 "entry, not a version or a download")
    if (statement.get("product"), statement.get("version")) != (product, version):
        raise VerificationFailed(
            f"log entry {bundle['index']} is about {statement.get('product')} "
            f"{statement.get('version')}, not {product} {version}")
    certified = set((statement.get("files") or {}).values()) | {statement.get("subject")}
    if digest not in certified:
        raise VerificationFailed(f"{path} (sha256 {digest}) is not a file of {product} "
                                 f"{version} as certified at log index {bundle['index']}")
    return {"sha256": digest, "index": bundle["index"], "statement": statement}


def verify_order(bundle: dict, log_key: str, order_id: int) -> dict:
    statement = check_bundle(bundle, log_key)
    if statement.get("type") != "order" or statement.get("order") != order_id:
        raise VerificationFailed(f"log entry {bundle['index']} is not order {order_id}")
    return statement


def trusted_log_key(market: Market | None, pinned: str | None) -> tuple[str, bool]:
    """The log key to trust: the pinned one (--log-key / $MARKET_LOG_KEY) or, failing that,
    the one the service announces (trust on first use: say so)."""
    if pinned:
        return pinned, True
    if market is None:
        raise VerificationFailed("offline verification needs --log-key (the log's vkey)")
    return market.request("GET", "log/key")["log_key"], False
