"""Fresh pointers: a per-scope version and a hash chain over the scope's pointers. Pure.

TUF defends against rollback and freeze attacks by versioning signed metadata; here
every `scope.activated` carries `generation` (strictly increasing per scope) and `prev`
(the digest of the exact stored bytes of the scope's previous pointer), both inside the
signed bytes. A genuinely signed old pointer replayed later (plainly or inside an atomic
batch) is then not newer than the one it follows, and its `prev` names an older link.

One set of rules for everyone: the writers (activator, pinner) take the next link from
the scope's projected state, runtimes refuse what breaks it, the auditor flags it.
Pointers written before these fields existed have no generation: they still fold and
are accepted as long as no chained pointer came before them on their scope.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from events.model import ScopeActivated


def pointer_digest(payload: bytes) -> str:
    """`sha256:<hex>` of a log entry's exact stored bytes: what the next pointer's `prev` names."""
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def entry_digest(subject: str, payload: bytes) -> str | None:
    """The digest a fold keeps for an entry (Position.digest): scope subjects only, the rest never chain."""
    return pointer_digest(payload) if ".scope." in subject else None


@dataclass(frozen=True, slots=True)
class ChainMark:
    """The last accepted pointer of a scope: its generation (None before chaining) and digest (None if unknown)."""

    generation: int | None
    digest: str | None


@dataclass(frozen=True, slots=True)
class Link:
    """What the next pointer of a scope must carry."""

    generation: int
    prev: str | None


def next_link(mark: ChainMark | None) -> Link:
    """The next pointer after `mark` (None: the scope has never had a pointer)."""
    if mark is None:
        return Link(1, None)
    return Link((mark.generation or 0) + 1, mark.digest)


def chain_break(mark: ChainMark | None, pointer: ScopeActivated) -> tuple[str, str] | None:
    """(code, why) if `pointer` cannot follow `mark` (None: the scope had no pointer yet); None if it can.

    - a pointer without a generation after a chained one: an old, pre-chain pointer replayed;
    - a generation not greater than the last one: a replay or a rollback of the pointer;
    - a `prev` other than the last pointer's digest (checked when that digest is known):
      a fork, or a pointer written against a state that never was the scope's.
    """
    if pointer.generation is None:
        if mark is not None and mark.generation is not None:
            return "pointer_not_newer", f"it carries no generation, the scope is at generation {mark.generation}"
        return None  # a pre-chain pointer on a pre-chain scope: accepted as before
    if mark is not None and mark.generation is not None and pointer.generation <= mark.generation:
        return "pointer_not_newer", f"generation {pointer.generation} is not newer than generation {mark.generation}"
    if mark is None and pointer.prev is not None:
        return "pointer_chain_broken", f"prev {pointer.prev[:19]}… but the scope had no pointer before"
    if mark is not None and mark.digest is not None and pointer.prev != mark.digest:
        return (
            "pointer_chain_broken",
            f"prev {(pointer.prev or 'null')[:19]}… is not the last pointer {mark.digest[:19]}…",
        )
    return None


def advance(mark: ChainMark | None, pointer: ScopeActivated, digest: str | None) -> ChainMark:
    """The mark once `pointer` (stored as bytes with `digest`) is accepted.

    A pre-chain pointer keeps the last generation known (none on a pre-chain scope)."""
    generation = pointer.generation if pointer.generation is not None else (mark.generation if mark else None)
    return ChainMark(generation, digest)


def chained_pointer(mark: ChainMark | None, **fields: Any) -> ScopeActivated:
    """A pointer that follows `mark` (the scope's `chain_mark`): what every pointer writer builds."""
    link = next_link(mark)
    return ScopeActivated(**fields, generation=link.generation, prev=link.prev)
