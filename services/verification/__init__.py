"""Verification: the gates a pack passes before anything runs it, apart from the consumers.

`gates.py` is pure (events and cryptography only); `context.py` builds the one `VerifyContext`
every caller hands the gates; `pipeline.py` fetches a pack's objects from the pack store and runs
the gates over them; `readiness.py` checks that every rollback target would pass them again (the
preparer, activator and promoter ask it before each step). The verifier consumer, the pinner, the
guard, rollback readiness, the runtime SDK and `kxr pack verify` all verify through here, so a
runtime needs nothing of the service's consumer framework to re-check what the service verified.
"""
