"""Verifier: the consumer that verifies a distributed pack (adapter.py) and rollback-target
readiness (readiness.py); the gates themselves live in services/verification/."""
