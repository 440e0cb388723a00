"""The integer fields of events, channel configurations and health reports: JSON Schema's `integer`.

JSON Schema (2020-12) calls any number with a zero fractional part an integer: `600.0` is as
valid a `window_s` as `600`, and a producer in Python or JavaScript that computed the number may
well write it so. Our schemas say `"type": "integer"`, so those are accepted and read as the int
they are; a fraction (`600.5`), a boolean or a string is still refused. Signed documents (the
manifest) keep their own rule: no float at all (CONTRACT §6), checked before any model sees them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, Strict


def integral(value: Any) -> Any:
    """An integral float as its int (the strict check then sees an int); anything else unchanged."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


# A bound given on the field (`x: JsonInt = Field(ge=1)`) is published as it should be; inside a union or a
# container pydantic cannot place it in the integer schema and writes `"ge": 0` where JSON Schema says
# `"minimum": 0`: so those fields use the bounded forms below, bounds inside, before the validator.
JsonInt = Annotated[int, Strict(), BeforeValidator(integral)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0), BeforeValidator(integral)]
PositiveInt = Annotated[int, Strict(), Field(ge=1), BeforeValidator(integral)]
