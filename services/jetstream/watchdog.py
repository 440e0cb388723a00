"""Watchdog: the service disconnects a role's connection that floods the server with messages.

Every request a role sends across its account's `$JS.API.>` import leaves a mapping in KX for up to
two response thresholds (services/nats_accounts.py, docs/permissions.md "JetStream's answers"): a
threshold bounds each mapping's life, not their number, and NATS has no per-user rate limit. One
runtime connection sending direct gets at full speed (34,600/s here) made the server hold 367,000
of them, +317 MiB. So every `every_s` the service asks the system account for each role account's
connections (`$SYS.REQ.ACCOUNT.<acc>.CONNZ`, every page of them), and disconnects
(`$SYS.REQ.SERVER.<id>.KICK`) any that sent more than `limit` messages a second since it last looked
(since the connection started, the first time it sees it). Nothing a role does sends that many: a
runtime reports and pulls a few times a second, a producer pushing a 1 GiB pack sends ~800 chunks a
second. And since many connections each just under that limit would flood as one (an account allows
thousands), an account's connections together may send `account_limit` messages a second: over it,
its busiest connections are disconnected, busiest first, until the rest are under it (5,000 runtimes
each reporting and pulling a few times a second send ~10,000). A kicked client may reconnect (and is
kicked again if it floods again).

Every page, not the 256 busiest: CONNZ sorts by messages received since a connection started, so in
an account of long-lived runtimes a new connection flooding at the limit took minutes to climb into
the first page; the pages are read in connection-id order, which does not move between two pages.

`flooding` is the pure judgement; `Watchdog` asks and disconnects. On a server that does not lend
these requests (an external NATS, or one without the embedded system account), the first request
has no responder: the watchdog says so once and stops.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from datetime import datetime

from nats.errors import NoRespondersError
from prometheus_client import Counter

from services.nats_accounts import ROLE_ACCOUNTS
from services.tasks import every

log = logging.getLogger(__name__)

KICKED = Counter(
    "kx_connections_kicked",
    "Connections of a role's account the watchdog disconnected for flooding the server with messages.",
    ["account"],
)
LIMIT_ENV = "KX_FLOOD_MSGS_PER_S"
DEFAULT_LIMIT = 10_000.0  # messages a second from one connection
ACCOUNT_LIMIT_ENV = "KX_FLOOD_ACCOUNT_MSGS_PER_S"
DEFAULT_ACCOUNT_LIMIT = 50_000.0  # messages a second from all of one role account's connections
PAGE = 256  # connections per CONNZ request

Seen = dict[int, tuple[float, int]]  # connection id -> (when, messages received from it by then)


def flooding(
    before: Mapping[int, tuple[float, int]],
    connections: Iterable[dict],
    now: float,
    limit: float,
    account_limit: float = math.inf,
):
    """((cid, rate) of the connections to disconnect, what to remember for next time): each over `limit`
    messages a second; then, while the others together send more than `account_limit`, the busiest of
    them.

    `connections`: CONNZ entries (`cid`, `in_msgs`, `start`). A connection first seen is measured from
    its start, so a flood is caught the first time it is looked at."""
    flood: list[tuple[int, float]] = []
    rest: list[tuple[float, int]] = []
    seen: Seen = {}
    for conn in connections:
        cid, count = int(conn["cid"]), int(conn.get("in_msgs") or 0)
        seen[cid] = (now, count)
        since, was = before[cid] if cid in before else (_started(conn.get("start")), 0)
        if since is None or now - since <= 0:
            continue
        rate = (count - was) / (now - since)
        if rate > limit:
            flood.append((cid, rate))
        else:
            rest.append((rate, cid))
    total = sum(rate for rate, _ in rest)
    for rate, cid in sorted(rest, reverse=True):
        if total <= account_limit:
            break
        flood.append((cid, rate))
        total -= rate
    return flood, seen


def _started(stamp: object) -> float | None:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def limit_from_env(
    env: Mapping[str, str] | None = None, name: str = LIMIT_ENV, default: float = DEFAULT_LIMIT
) -> float:
    raw = (os.environ if env is None else env).get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = math.nan
    if not value > 0:  # (nan too)
        log.warning("%s=%r is not a number of messages a second: using %.0f", name, raw, default)
        return default
    return value


class Watchdog:
    def __init__(
        self, nc, limit: float | None = None, every_s: float = 2.0, clock=None, account_limit: float | None = None
    ) -> None:
        self._nc = nc
        self.limit = limit_from_env() if limit is None else limit
        self.account_limit = (
            limit_from_env(name=ACCOUNT_LIMIT_ENV, default=DEFAULT_ACCOUNT_LIMIT)
            if account_limit is None
            else account_limit
        )
        self.every_s = every_s
        self._clock = clock or (lambda: datetime.now().timestamp())
        self._seen: dict[str, Seen] = {}
        self.kicked: list[tuple[str, int, float]] = []  # (account, cid, rate), newest last

    async def _ask(self, subject: str, body: dict) -> dict:
        answer = await self._nc.request(subject, json.dumps(body).encode(), timeout=2.0)
        doc = json.loads(answer.data)
        if doc.get("error"):
            raise RuntimeError(f"{subject}: {doc['error']}")
        return doc

    async def _connections(self, account: str) -> tuple[list[dict], str]:
        """Every connection of `account` (page by page, in connection-id order), and the server's id."""
        out: list[dict] = []
        while True:
            body = {"sort": "cid", "offset": len(out), "limit": PAGE}
            doc = await self._ask(f"$SYS.REQ.ACCOUNT.{account}.CONNZ", body)
            page = doc["data"].get("connections") or []
            out += page
            if len(page) < PAGE or len(out) >= int(doc["data"].get("total") or 0):
                return out, doc["server"]["id"]

    async def sweep(self) -> None:
        for account in ROLE_ACCOUNTS.values():
            connections, server = await self._connections(account)
            flood, self._seen[account] = flooding(
                self._seen.get(account, {}), connections, self._clock(), self.limit, self.account_limit
            )
            for cid, rate in flood:
                await self._ask(f"$SYS.REQ.SERVER.{server}.KICK", {"cid": cid})
                KICKED.labels(account).inc()
                self.kicked.append((account, cid, rate))
                log.warning(
                    "watchdog: disconnected connection %d of %s: %.0f messages/s (limits %.0f a connection, "
                    "%.0f the account's connections together)",
                    cid,
                    account,
                    rate,
                    self.limit,
                    self.account_limit,
                )

    async def run(self) -> None:
        try:
            await self.sweep()
        except NoRespondersError:
            log.info("watchdog: this NATS does not lend the service its connection requests: not watching floods")
            return
        except Exception as exc:  # housekeeping never stops the service: the next tick tries again
            log.warning("watchdog: sweep failed: %s: %s", exc.__class__.__name__, exc)
        await every(self.every_s, self.sweep, "watchdog: sweep", log)
