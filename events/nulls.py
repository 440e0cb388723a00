"""`null` for an optional container: read as the field left out.

Go's encoding/json writes a nil map or slice as `null` (`"error_classes": null`, `"refs": null`), and
a JSON producer that sets an optional object to its language's null writes `"rollback": null`. The
contract names these fields optional; refusing the `null` made a Go runtime's every sample an invalid
report (its windows inconclusive) and a request with `"rollback": null` a rejection. The published
schemas keep the plain type: a writer building from them never needs the `null`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BeforeValidator


def empty_if_null(empty: Callable[[], Any]) -> BeforeValidator:
    """A validator that reads `null` as `empty()` (the field's default) and leaves anything else to the type."""
    return BeforeValidator(lambda value: empty() if value is None else value)
