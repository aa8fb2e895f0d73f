"""Threads and a forked child on the real driver, which serializes every ioctl on one mutex.

Each thread and the child extend PCRs of their own, so the order between them does not matter;
the emulator then gets each PCR's sequence and must reach the same values. PCRs used: 24-28.
"""

from __future__ import annotations

import hashlib
import os
import threading
import traceback

from nsm import Nsm
from nsm.emulator import PCR_SIZE, RANDOM_SIZE
from tests.kernel.vm import Pair

ROUNDS = 20


def chunk(pcr: int, round_: int) -> bytes:
    return f"PCR {pcr}, round {round_}".encode()


def expected_pcr(pcr: int, rounds: int) -> bytes:
    value = bytes(PCR_SIZE)
    for r in range(rounds):
        value = hashlib.sha384(value + chunk(pcr, r)).digest()
    return value


def test_threads_share_one_client_and_open_their_own(pair: Pair) -> None:
    errors: list[BaseException] = []
    randoms: list[bytes] = []
    lock = threading.Lock()

    def work(module: Nsm, pcr: int) -> None:
        try:
            for r in range(ROUNDS):
                module.extend_pcr(pcr, chunk(pcr, r))
                random = module.get_random(RANDOM_SIZE)
                module.describe()
                with lock:
                    randoms.append(random)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    own = [Nsm.open(), Nsm.open()]
    # 24 and 25 through the session's client (one DeviceTransport, one fd, shared);
    # 26 and 27 each through a client of their own (their own fd).
    modules = [pair.device, pair.device, *own]
    threads = [
        threading.Thread(target=work, args=(module, 24 + i)) for i, module in enumerate(modules)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    for module in own:
        module.close()
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(set(randoms)) == len(randoms) == 4 * ROUNDS
    for pcr in range(24, 28):
        for r in range(ROUNDS):
            pair.emulator.extend_pcr(pcr, chunk(pcr, r))
        device, emulator = pair.both(Nsm.describe_pcr, pcr)
        assert device == emulator and device.data == expected_pcr(pcr, ROUNDS), pcr


def test_forked_child(pair: Pair) -> None:
    # The child uses the parent's client (the transport reopens /dev/nsm in the child) and one
    # of its own, and reports the values it saw through a pipe.
    pair.device.describe()  # the parent's transport is open before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its findings are checked by the parent
        status = 1
        try:
            os.close(read_end)
            inherited = pair.device.extend_pcr(28, chunk(28, 0))
            with Nsm.open() as own:
                fresh = own.extend_pcr(28, chunk(28, 1))
            os.write(write_end, (inherited + fresh).hex().encode())
            status = 0
        except BaseException:
            traceback.print_exc()  # the parent sees only the exit status
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = bytes.fromhex(pipe.read().decode())
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert report == expected_pcr(28, 1) + expected_pcr(28, 2)
    # The parent's client still works after the fork, and sees the child's extends.
    for r in range(2):
        pair.emulator.extend_pcr(28, chunk(28, r))
    device, emulator = pair.both(Nsm.describe_pcr, 28)
    assert device == emulator and device.data == expected_pcr(28, 2)
