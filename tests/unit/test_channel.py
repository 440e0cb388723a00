"""Channel configuration (CONTRACT §7): validation, cohort resolution, buckets and ramps (pure)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.channel import (
    BUCKETS,
    DEFAULT_CHANNEL,
    DEFAULT_COHORT,
    ChannelConfig,
    CohortRule,
    cohort_set_notes,
    resolve_cohort,
    tenant_bucket,
)
from events.model import Monitoring, Thresholds
from events.thresholds import Thresholds as TheModel
from projections.world import World
from services.actions.producer import parse_channel_config

# ---- builders --------------------------------------------------------------------------------

ENV, CHANNEL = "prod", "canary"
REST = {"name": "rest"}


def cohorts(*rules: dict[str, Any]) -> dict[str, Any]:
    """A config document with these rules followed by the catch-all `rest`."""
    return {"cohorts": [*rules, REST]}


def config(*rules: dict[str, Any], **extra: Any) -> ChannelConfig:
    return parse_channel_config({**cohorts(*rules), **extra}, CHANNEL)


def problems_of(doc: dict[str, Any], channel: str = CHANNEL) -> str:
    with pytest.raises(ValueError) as info:
        parse_channel_config(doc, channel)
    return str(info.value)


def contract_bucket(env: str, channel: str, tenant: str) -> int:
    """CONTRACT §7, written out independently of the code under test."""
    return int.from_bytes(hashlib.sha256(f"{env}/{channel}/{tenant}".encode()).digest()[:8], "big") % 10000


TENANTS = [f"tenant-{i}" for i in range(100_000)]


# ---- validation ------------------------------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("last-not-catch-all", {"cohorts": [{"name": "a", "tenants": ["t1"]}]}, ["last cohort (a) must be a catch-all"]),
    ("catch-all-not-last", {"cohorts": [{"name": "a"}, REST]}, ["cohort a has no criteria but is not last"]),
    (
        "percent-above-10000",
        cohorts({"name": "a", "percent": [0, 10001]}),
        ["cohort a: percent range [0, 10001) must lie inside 0..10000"],
    ),
    (
        "percent-negative",
        cohorts({"name": "a", "percent": [-1, 10]}),
        ["cohort a: percent range [-1, 10) must lie inside 0..10000"],
    ),
    ("percent-empty", cohorts({"name": "a", "percent": [10, 10]}), ["cohort a: percent range [10, 10)", "lo < hi"]),
    ("percent-reversed", cohorts({"name": "a", "percent": [500, 100]}), ["cohort a: percent range [500, 100)"]),
    (
        "percent-nested",
        cohorts({"name": "wide", "percent": [0, 5000]}, {"name": "narrow", "percent": [100, 200]}),
        ["cohort narrow can never match: every runtime it names matches cohort wide first"],
    ),
    (
        "tenants-covered",
        cohorts({"name": "a", "tenants": ["t1", "t2"]}, {"name": "b", "tenants": ["t2"], "percent": [0, 10]}),
        ["cohort b can never match: every runtime it names matches cohort a first"],
    ),
    (
        "regions-covered",
        cohorts({"name": "eu", "regions": ["eu"]}, {"name": "eu-early", "regions": ["eu"], "percent": [0, 500]}),
        ["cohort eu-early can never match: every runtime it names matches cohort eu first"],
    ),
    ("percent-float", cohorts({"name": "a", "percent": [0.5, 10]}), ["cohorts.0.percent.0"]),
    ("percent-three", cohorts({"name": "a", "percent": [0, 10, 20]}), ["cohorts.0.percent"]),
    (
        "plan-unknown",
        {**cohorts({"name": "a", "tenants": ["t1"]}), "plan": [["a"], ["zz"]]},
        ["plan names unknown cohort 'zz'"],
    ),
    (
        "plan-twice",
        {**cohorts({"name": "a", "tenants": ["t1"]}), "plan": [["a"], ["a", "rest"]]},
        ["plan names cohort 'a' twice"],
    ),
    (
        "plan-empty-stage",
        {**cohorts({"name": "a", "tenants": ["t1"]}), "plan": [["a"], []]},
        ["a plan stage must name at least one cohort"],
    ),
    (
        "duplicate-names",
        {"cohorts": [{"name": "a", "tenants": ["t1"]}, {"name": "a"}]},
        ["cohort names must be unique"],
    ),
    ("promote-to-self", {"promote_to": CHANNEL}, ["promote_to must name another channel"]),
    ("promote-to-not-token", {"promote_to": "stable.>"}, ["promote_to"]),
    ("cohort-name-not-token", {"cohorts": [{"name": "a.b"}]}, ["cohorts.0.name"]),
    ("no-cohorts", {"cohorts": []}, ["cohorts"]),
    ("window-zero", {"monitoring": {"window_s": 0}}, ["monitoring.window_s"]),
    (
        "threshold-mode",
        {"monitoring": {"window_s": 5, "thresholds": {"new_error_classes": "warn"}}},
        ["monitoring.thresholds.new_error_classes"],
    ),
    ("tenants-not-list", cohorts({"name": "a", "tenants": "t1"}), ["cohorts.0.tenants"]),
]


@pytest.mark.parametrize(("doc", "needles"), [(d, n) for _, d, n in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_config_gives_a_clear_message(doc: dict[str, Any], needles: list[str]) -> None:
    message = problems_of(doc)
    for needle in needles:
        assert needle in message, message


def test_every_problem_is_reported_at_once() -> None:
    doc = {
        "cohorts": [{"name": "a", "percent": [0, 20000]}, {"name": "a", "tenants": ["t1"]}],
        "plan": [["ghost"]],
    }
    message = problems_of(doc)
    for needle in (
        "cohort names must be unique",
        "must be a catch-all",
        "percent range [0, 20000)",
        "unknown cohort 'ghost'",
    ):
        assert needle in message, message


def test_promote_to_another_channel_is_fine() -> None:
    assert parse_channel_config({"promote_to": "stable"}, CHANNEL).promote_to == "stable"


def test_adjacent_percent_ranges_do_not_overlap() -> None:
    cfg = config({"name": "a", "percent": [0, 500]}, {"name": "b", "percent": [500, 10000]})
    assert cfg.cohort_names == ["a", "b", "rest"]


# CONTRACT §7: "A runtime belongs to the FIRST cohort whose criteria all match". Overlapping criteria are
# valid there (its own example puts `regions` beside `percent`): each of these was refused before session 26,
# when percent ranges were compared alone. Every cohort of each is reached by some runtime.
OVERLAPS_THE_CONTRACT_ALLOWS = {
    "five percent of each region": [
        {"name": "eu-early", "regions": ["eu"], "percent": [0, 500]},
        {"name": "us-early", "regions": ["us"], "percent": [0, 500]},
    ],
    "a canary inside a wider wave": [{"name": "canary", "percent": [0, 100]}, {"name": "wave", "percent": [0, 5000]}],
    "partly overlapping ranges": [{"name": "a", "percent": [0, 500]}, {"name": "b", "percent": [499, 600]}],
    "named tenants, then a share of everyone": [
        {"name": "internal", "tenants": ["t-int-1"]},
        {"name": "early", "percent": [0, 5000]},
    ],
    "a region inside a share": [{"name": "share", "percent": [0, 500]}, {"name": "eu", "regions": ["eu"]}],
}


@pytest.mark.parametrize("rules", OVERLAPS_THE_CONTRACT_ALLOWS.values(), ids=OVERLAPS_THE_CONTRACT_ALLOWS.keys())
def test_overlapping_criteria_the_contract_allows_are_accepted_and_resolved_first_match(rules) -> None:
    cfg = config(*rules)
    reached: set[str] = set()
    for tenant in ["t-int-1", *TENANTS[:20_000]]:
        for region in ("eu", "us", None):
            got = cfg.resolve(ENV, CHANNEL, tenant, region)
            bucket = contract_bucket(ENV, CHANNEL, tenant)
            first = next(
                r["name"]
                for r in [*rules, REST]
                if tenant in r.get("tenants", [tenant])
                and region in r.get("regions", [region])
                and r.get("percent", [0, BUCKETS])[0] <= bucket < r.get("percent", [0, BUCKETS])[1]
            )
            assert got == first, (tenant, region, got, first)
            reached.add(got)
    assert reached == {r["name"] for r in [*rules, REST]}, reached


def test_full_range_is_allowed() -> None:
    assert config({"name": "a", "percent": [0, BUCKETS]}).cohorts[0].percent == (0, BUCKETS)


def test_effective_plan_defaults_to_one_stage_per_cohort() -> None:
    cfg = config({"name": "a", "tenants": ["t1"]}, {"name": "b", "regions": ["eu"]})
    assert cfg.effective_plan == [["a"], ["b"], ["rest"]]
    explicit = parse_channel_config({**cohorts({"name": "a", "tenants": ["t1"]}), "plan": [["a", "rest"]]}, CHANNEL)
    assert explicit.effective_plan == [["a", "rest"]]


# ---- the default channel ---------------------------------------------------------------------


def test_default_channel_has_one_cohort_all_and_no_compatibility() -> None:
    assert DEFAULT_COHORT == "all"
    assert DEFAULT_CHANNEL.cohort_names == ["all"]
    assert DEFAULT_CHANNEL.effective_plan == [["all"]]
    assert DEFAULT_CHANNEL.compatibility.configured is False
    assert DEFAULT_CHANNEL.promote_to is None
    assert DEFAULT_CHANNEL.resolve(ENV, CHANNEL, "anyone", "eu") == "all"


def test_an_unconfigured_channel_reads_as_the_default() -> None:
    world = World()
    assert world.channel_state(ENV, CHANNEL) is None
    assert world.channel_config(ENV, CHANNEL) == DEFAULT_CHANNEL


@pytest.mark.parametrize(
    "compat",
    [
        {},
        {"schema": "kx-pack/1"},
        {"schema": "kx-pack/1", "profiles": [], "runtime_version": "2.4.0"},
        {"profiles": ["standard"], "runtime_version": "2.4.0"},
    ],
    ids=["empty", "schema-only", "no-profiles", "no-schema"],
)
def test_partial_compatibility_is_not_configured(compat: dict[str, Any]) -> None:
    assert parse_channel_config({"compatibility": compat}, CHANNEL).compatibility.configured is False


def test_complete_compatibility_is_configured() -> None:
    cfg = parse_channel_config(
        {"compatibility": {"schema": "kx-pack/1", "profiles": ["standard"], "runtime_version": "2.4.0"}}, CHANNEL
    )
    assert cfg.compatibility.configured is True


# ---- cohort resolution ----------------------------------------------------------------------


def _pick_tenant(predicate) -> str:
    return next(t for t in TENANTS if predicate(tenant_bucket(ENV, CHANNEL, t)))


LOW = _pick_tenant(lambda b: b < 500)  # a tenant whose bucket lies in [0, 500)
HIGH = _pick_tenant(lambda b: b >= 9000)  # one in [9000, 10000)

RESOLUTION = [
    # (rules before `rest`, tenant, region, expected)
    ("tenant-listed", [{"name": "internal", "tenants": ["t-int"]}], "t-int", None, "internal"),
    ("tenant-not-listed", [{"name": "internal", "tenants": ["t-int"]}], "t-other", None, "rest"),
    ("region-match", [{"name": "eu", "regions": ["eu", "uk"]}], "t1", "uk", "eu"),
    ("region-other", [{"name": "eu", "regions": ["eu"]}], "t1", "us", "rest"),
    ("region-unknown", [{"name": "eu", "regions": ["eu"]}], "t1", None, "rest"),
    ("percent-in", [{"name": "early", "percent": [0, 500]}], LOW, None, "early"),
    ("percent-out", [{"name": "early", "percent": [0, 500]}], HIGH, None, "rest"),
    ("all-criteria-match", [{"name": "eu-early", "regions": ["eu"], "percent": [0, 500]}], LOW, "eu", "eu-early"),
    ("region-ok-percent-not", [{"name": "eu-early", "regions": ["eu"], "percent": [0, 500]}], HIGH, "eu", "rest"),
    ("percent-ok-region-not", [{"name": "eu-early", "regions": ["eu"], "percent": [0, 500]}], LOW, "us", "rest"),
    (
        "first-match-wins",
        [{"name": "internal", "tenants": ["t-int"]}, {"name": "eu", "regions": ["eu"]}],
        "t-int",
        "eu",
        "internal",
    ),
    ("second-rule", [{"name": "internal", "tenants": ["t-int"]}, {"name": "eu", "regions": ["eu"]}], "t-x", "eu", "eu"),
    ("empty-tenant-list", [{"name": "nobody", "tenants": []}], "t1", None, "rest"),
]


@pytest.mark.parametrize(
    ("rules", "tenant", "region", "expected"), [r[1:] for r in RESOLUTION], ids=[r[0] for r in RESOLUTION]
)
def test_cohort_resolution(rules: list[dict[str, Any]], tenant: str, region: str | None, expected: str) -> None:
    cfg = config(*rules)
    assert cfg.resolve(ENV, CHANNEL, tenant, region) == expected
    assert resolve_cohort(cfg.cohorts, ENV, CHANNEL, tenant, region) == expected


def test_percent_bounds_are_half_open() -> None:
    tenant = _pick_tenant(lambda b: 0 < b < BUCKETS - 1)
    b = tenant_bucket(ENV, CHANNEL, tenant)
    assert config({"name": "c", "percent": [b, b + 1]}).resolve(ENV, CHANNEL, tenant) == "c"
    assert config({"name": "c", "percent": [0, b]}).resolve(ENV, CHANNEL, tenant) == "rest"
    assert config({"name": "c", "percent": [b + 1, BUCKETS]}).resolve(ENV, CHANNEL, tenant) == "rest"


def test_resolution_without_a_catch_all_raises() -> None:
    rules = [CohortRule(name="internal", tenants=["t-int"])]
    with pytest.raises(LookupError, match="no cohort matches tenant 't-x'"):
        resolve_cohort(rules, ENV, CHANNEL, "t-x")


@pytest.mark.parametrize("tenant", ["t1", "tenant-42", "", "caf\u00e9", "a/b"])
def test_bucket_follows_the_contract_formula(tenant: str) -> None:
    assert tenant_bucket(ENV, CHANNEL, tenant) == contract_bucket(ENV, CHANNEL, tenant)


def test_bucket_depends_on_env_and_channel() -> None:
    sample = TENANTS[:200]
    assert [tenant_bucket("prod", "canary", t) for t in sample] != [tenant_bucket("prod", "stable", t) for t in sample]
    assert [tenant_bucket("prod", "canary", t) for t in sample] != [
        tenant_bucket("staging", "canary", t) for t in sample
    ]


# ---- distribution -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def buckets() -> list[int]:
    return [tenant_bucket(ENV, CHANNEL, t) for t in TENANTS]


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(0, 1000), (0, 100), (0, 5000), (2500, 5000), (9000, 10000)],
    ids=["10%", "1%", "50%", "mid-25%", "top-10%"],
)
def test_percent_cohort_gets_its_share_within_one_point(buckets: list[int], lo: int, hi: int) -> None:
    share = sum(lo <= b < hi for b in buckets) / len(buckets)
    expected = (hi - lo) / BUCKETS
    assert abs(share - expected) <= 0.01, (share, expected)


def test_resolution_over_100k_tenants_matches_the_ramp() -> None:
    cfg = config({"name": "early", "percent": [0, 1000]})
    counts = {"early": 0, "rest": 0}
    for t in TENANTS:
        counts[cfg.resolve(ENV, CHANNEL, t)] += 1
    assert abs(counts["early"] / len(TENANTS) - 0.10) <= 0.01, counts


def test_buckets_are_spread_over_every_decile(buckets: list[int]) -> None:
    deciles = [0] * 10
    for b in buckets:
        deciles[b // 1000] += 1
    assert all(abs(n / len(buckets) - 0.1) <= 0.01 for n in deciles), deciles
    assert min(buckets) >= 0 and max(buckets) < BUCKETS


# ---- ramps are monotone ----------------------------------------------------------------------


IN_FIRST_PERCENT = [t for t in TENANTS[:20_000] if tenant_bucket(ENV, CHANNEL, t) < 100]


@settings(max_examples=300, deadline=None, database=None)
@given(
    tenant=st.text(min_size=1, max_size=20),
    above=st.integers(min_value=1, max_value=BUCKETS),
    grow=st.integers(min_value=0, max_value=BUCKETS),
)
def test_growing_a_ramp_never_drops_a_tenant(tenant: str, above: int, grow: int) -> None:
    """A ramp [0, hi) that holds the tenant still holds it once widened to [0, hi + grow)."""
    hi = min(BUCKETS, tenant_bucket(ENV, CHANNEL, tenant) + above)  # the tenant is inside by construction
    wider = min(BUCKETS, hi + grow)
    assert config({"name": "early", "percent": [0, hi]}).resolve(ENV, CHANNEL, tenant) == "early"
    assert config({"name": "early", "percent": [0, wider]}).resolve(ENV, CHANNEL, tenant) == "early"


@settings(max_examples=300, deadline=None, database=None)
@given(
    tenant=st.text(min_size=1, max_size=20),
    hi=st.integers(min_value=1, max_value=BUCKETS),
    grow=st.integers(min_value=0, max_value=BUCKETS),
)
def test_ramp_membership_is_monotone_in_the_upper_bound(tenant: str, hi: int, grow: int) -> None:
    wider = min(BUCKETS, hi + grow)
    in_narrow = config({"name": "early", "percent": [0, hi]}).resolve(ENV, CHANNEL, tenant) == "early"
    in_wide = config({"name": "early", "percent": [0, wider]}).resolve(ENV, CHANNEL, tenant) == "early"
    assert in_wide or not in_narrow
    assert in_narrow == (tenant_bucket(ENV, CHANNEL, tenant) < hi)


@settings(max_examples=100, deadline=None, database=None)
@given(tenant=st.sampled_from(IN_FIRST_PERCENT), region=st.sampled_from([None, "eu", "us"]))
def test_tenant_in_first_percent_stays_when_ramp_grows_to_ten(tenant: str, region: str | None) -> None:
    one = config({"name": "early", "percent": [0, 100]})
    ten = config({"name": "early", "percent": [0, 1000]})
    assert one.resolve(ENV, CHANNEL, tenant, region) == "early"
    assert ten.resolve(ENV, CHANNEL, tenant, region) == "early"


def test_ramp_monotone_over_the_population(buckets: list[int]) -> None:
    inside_1 = {t for t, b in zip(TENANTS, buckets) if b < 100}
    inside_10 = {t for t, b in zip(TENANTS, buckets) if b < 1000}
    assert inside_1 and inside_1 < inside_10


# ---- one thresholds model (issue 15) ----------------------------------------------------------


def test_a_channels_thresholds_and_a_releases_are_one_model_with_the_same_json() -> None:
    assert Thresholds is TheModel
    doc = {
        "error_rate_max": 0.05,
        "latency_p95_ms_max": 250,
        "tickets_max": 3,
        "trace_coverage_min": 0.9,
        "new_error_classes": "ignore",
        "statistical": "enforce",
        "a_newer_threshold": 1,
    }
    # as stored in `channel.configured` (the operator's file is checked strictly: services/actions/producer.py)
    cfg = ChannelConfig.model_validate(
        {**cohorts(), "monitoring": {"window_s": 90, "min_samples": 2, "thresholds": doc}}
    )
    assert type(cfg.monitoring.thresholds) is Thresholds
    release = Monitoring.model_validate({"window_s": 90, "min_samples": 2, "thresholds": doc})
    # what a channel stores and what a release carries serialise alike, extra fields kept
    assert cfg.monitoring.thresholds.model_dump(mode="json") == release.thresholds.model_dump(mode="json")
    assert cfg.monitoring.thresholds.model_dump(mode="json", exclude_unset=True) == doc


def test_a_new_cohort_set_says_what_it_changes() -> None:
    """`kxr channel set`'s notes (session 24): one per cohort added (with the remedy pre-flight names) or
    taken out; none for a first configuration nor for one that keeps the cohorts."""
    two = ChannelConfig.model_validate({"cohorts": [{"name": "internal", "tenants": ["t"]}, {"name": "rest"}]})
    three = ChannelConfig.model_validate(
        {"cohorts": [{"name": "internal", "tenants": ["t"]}, {"name": "eu", "regions": ["eu"]}, {"name": "rest"}]}
    )
    assert cohort_set_notes(None, three) == []
    assert cohort_set_notes(two, two.model_copy(update={"promote_to": "stable"})) == []
    (added,) = cohort_set_notes(two, three)
    assert (
        added.startswith("cohort eu is new: its runtimes keep the pack they run")
        and "--plan eu --rollback none" in added
    )
    (gone,) = cohort_set_notes(three, two)
    assert gone.startswith("cohort eu is taken out") and "holds (monitoring_inconclusive)" in gone
    assert len(cohort_set_notes(two, DEFAULT_CHANNEL)) == 3  # all added; internal and rest taken out
