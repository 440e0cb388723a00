"""Signature checks decided ahead (in worker processes) decide exactly as checks in line."""

from __future__ import annotations

from types import SimpleNamespace

from events.service_signing import ServiceKeys, signature_headers
from events.signing import SigningKey
from services.reads import signature_pool
from services.reads.signature_pool import SignaturePool

KEY = SigningKey.generate()
KEYS = ServiceKeys.of(KEY, ["activator"])
SUBJECT = "kx.scope.prod.canary.all.activated"


def entries() -> list[tuple[SimpleNamespace, str]]:
    """Genuine, forged (other bytes), unsigned, a stranger's and a non-base64 signature."""
    good = [b'{"n":%d}' % i for i in range(6)]
    out = [(SimpleNamespace(data=p, headers=signature_headers(KEY, SUBJECT, p)), SUBJECT) for p in good]
    out.append((SimpleNamespace(data=b'{"n":"x"}', headers=signature_headers(KEY, SUBJECT, b"{}")), SUBJECT))
    out.append((SimpleNamespace(data=b"{}", headers={}), SUBJECT))
    stranger = SigningKey.generate()
    not_base64 = {**signature_headers(KEY, SUBJECT, b"{}"), "Kx-Signature": "!"}
    out.append((SimpleNamespace(data=b"{}", headers=signature_headers(stranger, SUBJECT, b"{}")), SUBJECT))
    out.append((SimpleNamespace(data=b"{}", headers=not_base64), SUBJECT))
    return out


ENTRIES = entries()


def in_line(keys: ServiceKeys) -> list[str | None]:
    return [keys.check("activator", subject, e.data, e.headers) for e, subject in ENTRIES]


async def test_workers_decide_every_check_as_the_fold_would(monkeypatch):
    monkeypatch.setattr(signature_pool, "POOL_MIN_BATCH", 1)
    batch = ENTRIES
    with SignaturePool(KEYS) as pool:
        verdicts = await pool.verdicts(pool.submit(batch))
    assert len(verdicts) == 7  # the six genuine and the forged one: the rest need no verification
    assert sorted(verdicts.values()).count(False) == 1
    assert in_line(KEYS.with_verdicts(verdicts)) == in_line(KEYS)


async def test_a_short_batch_is_left_to_the_fold():
    with SignaturePool(KEYS) as pool:
        assert pool.submit(ENTRIES) == []  # fewer than POOL_MIN_BATCH checks: no processes started
        assert pool._pool is None


async def test_workers_that_cannot_start_leave_every_check_to_the_fold(monkeypatch, caplog):
    def no_processes(*args, **kwargs):
        raise OSError("no processes here")

    monkeypatch.setattr(signature_pool, "POOL_MIN_BATCH", 1)
    monkeypatch.setattr(signature_pool, "ProcessPoolExecutor", no_processes)
    with SignaturePool(KEYS) as pool:
        ticket = pool.submit(ENTRIES)
        assert ticket == [] and await pool.verdicts(ticket) == {}
    assert "checking signatures in line" in caplog.text
    assert in_line(KEYS.with_verdicts({})) == in_line(KEYS)
