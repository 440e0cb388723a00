"""Machine-readable contracts for other languages: JSON Schemas and an AsyncAPI document.

Everything here is generated from the code's own models (events/) and permissions
(services/permissions.py), so the published documents cannot say something the code
does not do; tests/unit/test_contracts.py checks the committed copies under docs/.
"""
