"""Pins on a real nats-server: which pins the pinner acts on."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from events.model import Scope
from services.actions.pins import pin
from tests.harness import OPERATOR, make_pack, running_service, wait_for
from tests.integration.test_operator_model import scope_act


async def test_a_pin_already_expired_when_the_pinner_sees_it_moves_no_pointer(nats_url, prefix):
    """The pinner is down while a short pin is written and runs out. Once it runs, only the expiry is
    recorded (`scope.unpinned`, reason `expired`): the scope stays on what it ran. Before: the pinner
    switched the scope to the expired pin's pack, then recorded the expiry, leaving it there."""
    async with running_service(nats_url, prefix) as svc:
        assert (await svc.first_release()).outcome == "success"
        second = make_pack("1.1.0", svc.key)
        await svc.request("r2", second)
        assert (await svc.wait_release("r2")).outcome == "success"
        trust_root = svc.trust_root
    scope = Scope(env="prod", channel="canary", cohort="internal")
    # no pinner (it rides with the activator) while the pin is written and runs out
    async with running_service(nats_url, prefix, roles=(), trust_root=trust_root) as svc:
        now = svc.app.clock()
        until = now + timedelta(seconds=1)
        pin_seq = await scope_act(svc, pin(svc.world, scope, "1.0.0", until, "short hold", OPERATOR, now), scope)
        await asyncio.sleep(1.5)
        assert svc.world.scope("prod", "canary", "internal").pinned_at(svc.app.clock()) is None
    async with running_service(nats_url, prefix, roles=("activator",), trust_root=trust_root) as svc:

        async def pin_handled() -> bool:
            info = await svc.app.js.consumer_info(svc.app.subjects.releases_stream, "kxr-pinner")
            return info.ack_floor.stream_seq >= pin_seq

        # the pinner has decided on the pin (acked it), and the expiry is recorded
        deadline = asyncio.get_running_loop().time() + 20
        while not await pin_handled():
            assert asyncio.get_running_loop().time() < deadline, "the pinner never handled the pin"
            await asyncio.sleep(0.05)
        await wait_for(lambda: svc.world.scope("prod", "canary", "internal").pin is None, 10, "the pin's expiry")
        await svc.catch_up()
        internal = svc.world.scope("prod", "canary", "internal")
        assert internal.active.kind == "rollout" and internal.active_pack.digest == second.digest, (
            f"an expired pin moved the pointer: internal runs {internal.active_pack.version} ({internal.active.kind})"
        )
