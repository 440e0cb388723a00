"""KX_METRICS_LOG=off, against a real service: /metrics has the process's own series and none that
is folded from the log (another process of the deployment exports those), and reads no history."""

from __future__ import annotations

from services.jetstream.log_reads import log_entries
from services.observability.endpoint import serve_metrics
from services.observability.metrics import LOG_DERIVED
from tests.harness import running_service
from tests.integration.test_observability import scrape_when


async def test_the_log_series_come_only_from_the_process_that_exports_them(nats_url, prefix):
    async with running_service(nats_url, prefix, roles=("preparer",)) as svc:
        app = svc.app

        def history():
            return log_entries(app.js, app.subjects)

        def lag_and(f):
            return bool(f.get("kx_consumer_pending_messages"))

        async with (
            serve_metrics(app, "127.0.0.1:0", history, lag_every=0.2) as on,
            serve_metrics(app, "127.0.0.1:0", history, lag_every=0.2, log_series=False) as off,
        ):
            assert off.releases is None and on.releases is not None
            with_log = await scrape_when(on.url, lambda f: lag_and(f) and "kx_log_events" in f, "lag and the log")
            without = await scrape_when(off.url, lag_and, "the preparer's lag")
    assert set(LOG_DERIVED) <= set(with_log)
    assert set(LOG_DERIVED) & set(without) == set(), sorted(set(LOG_DERIVED) & set(without))
    assert {"kx_events_processed", "process_cpu_seconds"} <= set(without), sorted(without)
