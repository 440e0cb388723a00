"""A worker process for a replay's signature checks: `python -m services.reads.verify_worker`.

`replay` (audit.py) starts one or more and keeps them busy a batch ahead of its fold. Our own
process, started with the same interpreter: no multiprocessing (its spawn would import the
caller's `__main__` again in the child, and a fork would copy the event loop and its threads).

Protocol, until stdin closes: a request is a 4-byte big-endian length and the pickle of a list of
`ServiceKeys.job` tuples; the answer is a 4-byte length and one byte per job, 1 where
`verify_job` says the signature verifies, 0 where it does not.
"""

from __future__ import annotations

import pickle
import struct
import sys
from typing import BinaryIO

from events.service_signing import verify_jobs

HEADER = struct.Struct(">I")


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    while True:
        head = inp.read(HEADER.size)
        if len(head) < HEADER.size:
            return  # the replay closed our stdin: done
        (size,) = HEADER.unpack(head)
        jobs = pickle.loads(inp.read(size))  # from the process that started us
        answer = bytes(verify_jobs(jobs))
        out.write(HEADER.pack(len(answer)) + answer)
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
