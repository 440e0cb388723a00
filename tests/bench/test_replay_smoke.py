"""The replay bench runs end to end on a tiny log (figures are not judged: no timing asserts)."""

import asyncio

from bench.replay import run


def test_replay_bench_reports_every_figure():
    res = asyncio.run(run(events=2000, tail=200, channels=2))
    assert res["events"] >= 2000
    assert res["releases"] == res["events"] // 10  # 3 releases per 30 recorded entries, all folded
    for figure in ("baseline", "ours", "ours_signatures", "cli"):
        assert res[figure]["events_per_s"] > 0
    base = res["baseline"]  # the mean of a raw read on each side of ours
    assert base["before_events_per_s"] > 0 and base["after_events_per_s"] > 0
    assert min(base["before_events_per_s"], base["after_events_per_s"]) <= base["events_per_s"]
    assert base["events_per_s"] <= max(base["before_events_per_s"], base["after_events_per_s"])
    assert res["cli"]["violations"] == 0
    restart = res["warm_restart"]
    assert restart["seconds"] > 0 and restart["snapshot_bytes"] > 0
    assert restart["to_seq"] == res["events"] and restart["tail"] >= 200  # started from the snapshot, caught up
    assert set(res["met"]) == {"replay", "signatures", "warm_restart"}  # each target judged
    assert all(isinstance(met, bool) for met in res["met"].values())
