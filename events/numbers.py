"""The non-integer number fields (thresholds, latencies, shares, figures): JSON Schema's `number`.

A JSON number and nothing else, finite. Pydantic's lax float took `"0.01"`, `" 0.5 "`, `"1_000"`,
`true` (as 1.0: a window then passed at a 90% error rate), and `"Infinity"`, `"NaN"` or `1e999` (a
threshold no event holding it can be written with: the preparer failed on every delivery of such a
request until the reactor gave up, where CONTRACT §5 promises a `release.rejected` naming it). An int
is a number (`600` as well as `600.0`); an integer past a double's range is refused with the others.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict

Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
