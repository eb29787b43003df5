"""Which due transfers a claim takes: the rule both backends apply inside their
transaction (see `Store.claim_due`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A due row, as the claim reads it (oldest first)."""

    id: int
    partner: str | None


@dataclass(frozen=True)
class Limits:
    """The node's free slots and the per-partner limits counted across all nodes."""

    slots: int
    partner_limits: Mapping[str, int]
    default_partner_limit: int

    def of(self, partner: str) -> int:
        return self.partner_limits.get(partner, self.default_partner_limit)


def choose(
    candidates: Iterable[Candidate], running: dict[str, int], limits: Limits
) -> tuple[list[int], set[str]]:
    """The ids to claim, in order, and the partners that are full.

    `running` holds the RUNNING count of every partner among the candidates (all nodes
    included) and is updated with the rows chosen. A row without a partner (a server
    transfer the gateway finishes alone) takes a slot only: partner limits are about
    connections to partners. Stops at `limits.slots` rows.
    """
    chosen: list[int] = []
    full: set[str] = set()
    for candidate in candidates:
        if len(chosen) >= limits.slots:
            break
        partner = candidate.partner
        if partner is not None:
            if running.get(partner, 0) >= limits.of(partner):
                full.add(partner)
                continue
            running[partner] = running.get(partner, 0) + 1
        chosen.append(candidate.id)
    full |= {p for p, n in running.items() if n >= limits.of(p)}
    return chosen, full
