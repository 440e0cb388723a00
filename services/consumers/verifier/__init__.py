"""Verifier: pure verification gates (gates.py) run before any activation."""
