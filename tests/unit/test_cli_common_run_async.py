"""`run_async` hands a command's result back without asyncio ever formatting it."""

import pytest

from services.cli.common import run_async


class Huge:
    """Stands for a replayed world: formatting it is the cost to avoid."""

    reprs = 0

    def __repr__(self) -> str:
        Huge.reprs += 1
        return "Huge()"


def test_the_result_is_returned_and_never_formatted() -> None:
    async def command():
        return Huge()

    result = run_async(command())
    assert isinstance(result, Huge)
    assert Huge.reprs == 0  # asyncio.run's SIGINT clean-up formats the main task's result on 3.11


def test_an_exception_propagates() -> None:
    async def failing():
        raise ValueError("no such release")

    with pytest.raises(ValueError, match="no such release"):
        run_async(failing())
