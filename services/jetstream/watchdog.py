"""Watchdog: the service disconnects a role's connection that floods the server with messages.

Every request a role sends across its account's `$JS.API.>` import leaves a mapping in KX for up to
two response thresholds (services/nats_accounts.py, docs/permissions.md "JetStream's answers"): a
threshold bounds each mapping's life, not their number, and NATS has no per-user rate limit. One
runtime connection sending direct gets at full speed (34,600/s here) made the server hold 367,000
of them, +317 MiB. So every `every_s` the service asks the system account for each role account's
busiest connections (`$SYS.REQ.ACCOUNT.<acc>.CONNZ`, sorted by messages received from them), and
disconnects (`$SYS.REQ.SERVER.<id>.KICK`) any that sent more than `limit` messages a second since it
last looked (since the connection started, the first time it sees it). Nothing a role does sends
that many: a runtime reports and pulls a few times a second, a producer pushing a 1 GiB pack sends
~800 chunks a second. A kicked client may reconnect (and is kicked again if it floods again).

`flooding` is the pure judgement; `Watchdog` asks and disconnects. On a server that does not lend
these requests (an external NATS, or one without the embedded system account), the first request
has no responder: the watchdog says so once and stops.
"""

from __future__ import annotations

import json
import logging
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
TOP = 256  # the busiest connections of an account looked at, each time (a page of CONNZ)

Seen = dict[int, tuple[float, int]]  # connection id -> (when, messages received from it by then)


def flooding(before: Mapping[int, tuple[float, int]], connections: Iterable[dict], now: float, limit: float):
    """((cid, rate) of connections over `limit` messages a second, what to remember for next time).

    `connections`: CONNZ entries (`cid`, `in_msgs`, `start`). A connection first seen is measured from
    its start, so a flood is caught the first time it is looked at."""
    flood: list[tuple[int, float]] = []
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
    return flood, seen


def _started(stamp: object) -> float | None:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def limit_from_env(env: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get(LIMIT_ENV)
    try:
        return float(raw) if raw else DEFAULT_LIMIT
    except ValueError:
        log.warning("%s=%r is not a number of messages a second: using %.0f", LIMIT_ENV, raw, DEFAULT_LIMIT)
        return DEFAULT_LIMIT


class Watchdog:
    def __init__(self, nc, limit: float | None = None, every_s: float = 2.0, clock=None) -> None:
        self._nc = nc
        self.limit = limit_from_env() if limit is None else limit
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

    async def sweep(self) -> None:
        for account in ROLE_ACCOUNTS.values():
            doc = await self._ask(f"$SYS.REQ.ACCOUNT.{account}.CONNZ", {"sort": "msgs_from", "limit": TOP})
            flood, self._seen[account] = flooding(
                self._seen.get(account, {}), doc["data"].get("connections") or [], self._clock(), self.limit
            )
            server = doc["server"]["id"]
            for cid, rate in flood:
                await self._ask(f"$SYS.REQ.SERVER.{server}.KICK", {"cid": cid})
                KICKED.labels(account).inc()
                self.kicked.append((account, cid, rate))
                log.warning(
                    "watchdog: disconnected connection %d of %s: %.0f messages/s (limit %.0f)",
                    cid,
                    account,
                    rate,
                    self.limit,
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
