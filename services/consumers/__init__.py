"""Lifecycle consumers that joined after services/ grew flat (issue 15 moves the others here):
each a pure decide plus a thin adapter on the reactor."""
