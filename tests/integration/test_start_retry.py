"""A JetStream request that times out during start-up starts the service again (on a real server)."""

from __future__ import annotations

import pytest
from nats import errors as nats_errors

from services import app as app_module
from services.jetstream.client import connect
from services.serve import started_app
from services.settings import Settings


class FlakyStart:
    """App.start, timing out like a busy cluster's meta leader the first `failures` times."""

    def __init__(self, failures: int, error: BaseException | None = None) -> None:
        self.failures, self.calls, self.error = failures, 0, error or nats_errors.TimeoutError()
        self.real = app_module.App.start

    def as_method(self):
        async def start(app):  # a function, so that it binds to each App
            return await self(app)

        return start

    async def __call__(self, app):
        self.calls += 1
        await self.real(app)  # really started: the retry must stop what it started
        if self.calls <= self.failures:
            raise self.error


@pytest.mark.parametrize("failures, started", [(0, True), (2, True), (3, False)])
async def test_start_up_timeouts_are_retried_a_few_times(nats_url, prefix, monkeypatch, failures, started):
    flaky = FlakyStart(failures)
    monkeypatch.setattr(app_module.App, "start", flaky.as_method())
    nc = await connect(nats_url)
    settings = Settings(nats_url=nats_url, prefix=prefix, roles=("preparer",))
    try:
        if started:
            app = await started_app(nc, settings, None, app_module.utc_clock, None, pause_s=0.01)
            assert flaky.calls == failures + 1 and all(not t.done() for t in app._tasks)
            await app.stop()
        else:
            with pytest.raises(nats_errors.TimeoutError):
                await started_app(nc, settings, None, app_module.utc_clock, None, pause_s=0.01)
            assert flaky.calls == 3
    finally:
        await nc.close()


async def test_other_start_up_errors_are_not_retried(nats_url, prefix, monkeypatch):
    flaky = FlakyStart(1, PermissionError("not allowed"))
    monkeypatch.setattr(app_module.App, "start", flaky.as_method())
    nc = await connect(nats_url)
    try:
        with pytest.raises(PermissionError):
            await started_app(
                nc, Settings(nats_url=nats_url, prefix=prefix, roles=("preparer",)), None, app_module.utc_clock, None
            )
        assert flaky.calls == 1
    finally:
        await nc.close()
