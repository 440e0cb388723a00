"""`placed`: creating a stream waits out a cluster that cannot place its replicas (or answer) yet, and only that."""

from __future__ import annotations

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError

from services.jetstream.layout import NO_SUITABLE_PEERS, placed


def _refusal(err_code: int) -> APIError:
    exc = APIError(code=400, err_code=err_code, description="no suitable peers for placement, peer offline")
    return exc


def scripted(*answers):
    """A create() that raises or returns each answer in turn; `left` holds what it was not asked for."""
    left = list(answers)

    async def create():
        answer = left.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return create, left


async def test_no_suitable_peers_is_waited_out() -> None:
    create, left = scripted(_refusal(NO_SUITABLE_PEERS), _refusal(NO_SUITABLE_PEERS), "created")
    assert await placed(create, "stream X", wait_s=5) == "created"
    assert left == []


async def test_another_refusal_is_raised_at_once() -> None:
    calls = 0

    async def create():
        nonlocal calls
        calls += 1
        raise _refusal(10058)  # stream name already in use with a different configuration

    with pytest.raises(APIError):
        await placed(create, "stream X", wait_s=5)
    assert calls == 1


async def test_a_cluster_that_never_places_fails_after_the_wait() -> None:
    async def create():
        raise _refusal(NO_SUITABLE_PEERS)

    with pytest.raises(APIError) as raised:
        await placed(create, "stream X", wait_s=0.6)
    assert raised.value.err_code == NO_SUITABLE_PEERS


async def test_a_create_request_that_times_out_is_asked_again() -> None:
    """A loaded cluster may not answer within the request's timeout while the replicas agree;
    creating with the same config again answers with what was created."""
    create, left = scripted(NatsTimeoutError(), "created")
    assert await placed(create, "stream X", wait_s=5) == "created"
    assert left == []


async def test_a_create_that_never_answers_fails_after_the_wait() -> None:
    async def create():
        raise NatsTimeoutError()

    with pytest.raises(TimeoutError):
        await placed(create, "stream X", wait_s=0.6)
