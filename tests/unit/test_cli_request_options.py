"""`kxr release request` checks its options with the contract's models before it reads or sends
anything (issue 16: `--window -1`, `--rollback sideways` surfaced as late rejections or tracebacks;
`--window` alone silently sent min_samples 1, so both were required until session 26, when a request's
monitoring became optional field by field: each option may now come alone, the channel fills the other)."""

from __future__ import annotations

import pytest

from services.cli.common import CliError
from services.cli.release import _request_options


@pytest.mark.parametrize(
    "rollback,window,min_samples,says",
    [
        ("sideways", None, None, "--rollback 'sideways'"),
        ("lkg", -1, 2, "--window -1"),
        ("lkg", 60, 0, "--min-samples 0"),
        ("lkg", 10**9, None, "--window 1000000000"),
    ],
)
def test_a_bad_option_is_one_clear_error(rollback, window, min_samples, says) -> None:
    with pytest.raises(CliError) as refused:
        _request_options(rollback, window, min_samples)
    assert str(refused.value).startswith(says) and "\n" not in str(refused.value), str(refused.value)


def test_good_options_become_the_request_parts() -> None:
    assert _request_options("pinned", None, None) == ({"strategy": "pinned"}, None)
    assert _request_options("lkg", 90, 5) == ({"strategy": "lkg"}, {"window_s": 90, "min_samples": 5})
    assert _request_options("lkg", 90, None) == ({"strategy": "lkg"}, {"window_s": 90})
    assert _request_options("lkg", None, 5) == ({"strategy": "lkg"}, {"min_samples": 5})
