"""Helpers for the end-to-end oracle tests: the demo's `OracleStack` with fast rounds.

As root the enclave runs in a fresh network namespace (`unshare --net`: only `lo`, down, so its
only way out is the Unix sockets standing in for vsock); otherwise as a plain process with DNS
guarded off, which still runs the whole path (and says so in the skip-free test ids' docs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from oracle_example.demo import OracleStack

#: Rounds every 0.3 s: scenario tests wait a few rounds, not a few seconds each.
FAST_INTERVAL = 0.3


@contextmanager
def oracle_stack(
    *,
    enclave_args: Sequence[str] = (),
    emulator_debug: bool = False,
    wait: bool = True,
) -> Iterator[OracleStack]:
    stack = OracleStack(
        seed=7,
        replay=True,
        netns=None,  # root: a namespace; otherwise a plain process
        emulator_debug=emulator_debug,
        interval=FAST_INTERVAL,
        enclave_args=enclave_args,
    )
    try:
        stack.start()
        if wait:
            stack.wait_ready(timeout=20)
        yield stack
    finally:
        stack.close()


def in_namespace() -> bool:
    return os.geteuid() == 0


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


def outcomes(report_json: Any) -> dict[str, str]:
    return {s["source"]: s["outcome"] for s in report_json["sources"]}
