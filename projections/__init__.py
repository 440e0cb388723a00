"""Pure folds over the release log: `apply(state, position, event) -> state`.

The same folds run in unit tests (a list of events), inside every consumer (its
view of the world) and in the auditor's replay, so all three always agree.
"""
