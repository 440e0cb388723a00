"""Thresholds.tightened_by: a request may tighten a channel's thresholds, never loosen them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from events.thresholds import Thresholds

BOUNDS = [name for name in Thresholds.model_fields if name.endswith(("_max", "_min"))]
INTEGER = {"tickets_max", "escalations_max"}


def _value(name: str):
    if name in INTEGER:
        return st.integers(min_value=0, max_value=10**6)
    return st.floats(min_value=0, max_value=1, allow_nan=False)


def test_every_bound_is_named_by_its_direction() -> None:
    # the rule reads the direction from the name: a threshold that is neither would never tighten
    numeric = {n for n, f in Thresholds.model_fields.items() if n not in ("new_error_classes", "statistical")}
    assert numeric == set(BOUNDS)


@given(st.data())
def test_a_request_never_loosens_and_always_tightens(data) -> None:
    name = data.draw(st.sampled_from(BOUNDS))
    channel_value = data.draw(st.one_of(st.none(), _value(name)))
    asked_value = data.draw(st.one_of(st.none(), _value(name)))
    channel = Thresholds(**{name: channel_value})
    asked = Thresholds(**{name: asked_value})
    merged = getattr(channel.tightened_by(asked), name)
    present = [v for v in (channel_value, asked_value) if v is not None]
    if not present:
        assert merged is None
    elif name.endswith("_max"):
        assert merged == min(present)
    else:
        assert merged == max(present)


def test_fail_and_enforce_are_sticky_and_unset_fields_keep_the_channel() -> None:
    channel = Thresholds(error_rate_max=0.01, new_error_classes="fail", statistical="report")
    assert channel.tightened_by(Thresholds(new_error_classes="ignore")).new_error_classes == "fail"
    assert channel.tightened_by(Thresholds(statistical="enforce")).statistical == "enforce"
    assert channel.tightened_by(Thresholds(statistical="off")).statistical == "report"
    # a request that names nothing keeps every value of the channel
    assert channel.tightened_by(Thresholds()) == channel


def test_a_limit_is_a_number_a_double_holds_and_asking_never_raises() -> None:
    """JSON numbers have no size limit: an integer past a double's range is valid JSON but cannot judge.
    `is_limit` says so (math.isfinite raised OverflowError on it, and took every log reader with it)."""
    from events.thresholds import DOUBLE_MAX, is_limit

    assert is_limit(10**300) and is_limit(-(10**300)) and is_limit(int(DOUBLE_MAX)) and is_limit(0.5)
    assert not any(is_limit(v) for v in (10**400, -(10**400), int(DOUBLE_MAX) * 2, float("inf"), True, "1", None))
    channel = Thresholds(error_rate_max=0.05, queue_depth_max=100)  # type: ignore[call-arg]
    asked = Thresholds(queue_depth_max=10**400, backlog_min=-(10**400))  # type: ignore[call-arg]
    merged = channel.tightened_by(asked)  # a request's value that cannot judge is ignored, as "x" is
    assert merged.queue_depth_max == 100 and "backlog_min" not in merged.model_dump()  # type: ignore[attr-defined]
