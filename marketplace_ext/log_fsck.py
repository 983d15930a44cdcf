"""The certification log's integrity check (``market log fsck``): recompute the tree from the
stored entries and compare every stored node and checkpoint. :mod:`marketplace_ext.certlog`
appends and proves; this only reads."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import logentry, merkle
from .log_nodes import SqlNodeStore
from .orm import LogCheckpoint, LogEntry, LogState


def fsck(session: Session) -> dict:
    """Recompute the tree from the stored entries and compare every stored node and
    checkpoint; reports the first divergence."""
    state = session.scalar(select(LogState).where(LogState.id == 1)) or LogState(
        next_index=0, tree_size=0)  # (a log without entries has no state row yet)
    frontier = merkle.Frontier()
    expected_index = 0
    stored = SqlNodeStore(session)
    checkpoints = {cp.size: cp.root for cp in session.scalars(select(LogCheckpoint))}
    for row in session.scalars(select(LogEntry).order_by(LogEntry.idx)
                               .execution_options(yield_per=5000)):
        if row.idx != expected_index:
            return {"ok": False, "index": expected_index,
                    "problem": f"entry {expected_index} is missing (next is {row.idx})"}
        leaf = merkle.leaf_hash(row.data.encode())
        if leaf.hex() != row.leaf_hash:
            return {"ok": False, "index": row.idx,
                    "problem": f"entry {row.idx} does not hash to its stored leaf hash"}
        problem = _private_part_problem(row)
        if problem:
            return {"ok": False, "index": row.idx, "problem": f"entry {row.idx}: {problem}"}
        if row.idx < state.tree_size:
            new_nodes = frontier.append(leaf)
            found = stored.get_many([(lv, ix) for lv, ix, _h in new_nodes])
            for level, idx, h in new_nodes:
                if found.get((level, idx)) != h:
                    return {"ok": False, "index": row.idx,
                            "problem": f"stored node ({level}, {idx}) differs from the "
                                       f"entries"}
            root = checkpoints.get(frontier.size)
            if root is not None and root != frontier.root().hex():
                return {"ok": False, "index": row.idx,
                        "problem": f"checkpoint at size {frontier.size} has another root"}
        expected_index += 1
    if expected_index != state.next_index:
        return {"ok": False, "index": expected_index,
                "problem": f"{state.next_index - expected_index} sequenced entries missing"}
    return {"ok": True, "entries": expected_index, "tree_size": state.tree_size}


def _private_part_problem(row: LogEntry) -> str | None:
    """Why the stored details of ``row`` do not match its public part, if they do not."""
    try:
        public = logentry.parse_public(row.data)
        if public is None:
            return None if row.details is None else "a legacy entry with private details"
        if row.details is None or row.salt is None:
            return "its details or its salt are missing"
        if public["type"] != row.kind:
            return f"its public part says {public['type']!r}, its row {row.kind!r}"
        logentry.open_statement(row.data, row.details, row.salt)
    except (logentry.EntryMismatch, ValueError) as e:
        return str(e)
    return None
