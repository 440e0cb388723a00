"""The lifecycle consumers, each on one contract run by the reactor (reactor.py): the phases it acts
in, an `observe` that does the IO and returns facts (or a named failure), a pure `decide` on those
facts, and a pure `fail_closed`; all built with a narrow `Port` (port.py), never the App. Preparer,
distributor, verifier/, activator, monitoring/, promoter follow it; pinner, guard, notifier/ act on
scopes or single events and share its pieces (conflict retry; the guard's rollbacks run through it)."""
