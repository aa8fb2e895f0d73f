"""The ioctl itself, against drivers/misc/nsm.c: sizes, truncation, bad pointers, other numbers,
and what the device file does besides the ioctl. Raw ioctls go through cffi (`nsm._ffi`), the
same `ioctl` the client calls.

What the in-tree driver (drivers/misc/nsm.c, nsm_dev_ioctl) does, and so what these tests expect:
- any command but NSM_IOCTL_RAW: EINVAL, checked before the argument is read;
- the argument struct unreadable: EFAULT, before the device lock is taken;
- request.len > 0x1000: EMSGSIZE, before the request is read;
- the request unreadable: EFAULT, nothing sent;
- the response buffer unwritable: the request has already run on the device, then EFAULT;
- a response buffer shorter than the answer: the answer is cut to it, response.len says how
  much was written, and the ioctl succeeds.
The file has no read or write handler (the VFS answers EINVAL; EBADF for a write on a read-only
fd) and no open handler, so any fd for the node, however it was obtained, reaches the same
driver.
PCRs used here: 29-31.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
from typing import Any

import pytest

from nsm import Nsm
from nsm._ffi import NSM_IOCTL_RAW, NSM_MAGIC, NSM_RESPONSE_MAX_SIZE, ffi, ioc_iowr, lib
from nsm._protocol import decode_response, encode_request
from nsm.device import DEVICE_PATH, raw_ioctl
from nsm.emulator import PCR_SIZE
from nsm.errors import DeviceError
from nsm.models import DescribeNSM, DescribePCR, ExtendPCR, PcrState
from tests.kernel.vm import Pair

#: An address no process maps (the zero page) and one in the kernel's half.
UNMAPPED = 8
KERNEL_ADDRESS = 0xFFFF_8880_0000_0000


def ioctl_errno(fd: int, number: int, arg: Any) -> int:
    """0 if the ioctl succeeded, else its errno."""
    rc = int(lib.ioctl(fd, ffi.cast("unsigned long", number), arg))
    return 0 if rc >= 0 else int(ffi.errno)


def nsm_raw(request: int, request_len: int, response: int, response_len: int) -> Any:
    raw = ffi.new("struct nsm_raw *")
    raw.request.addr, raw.request.len = request, request_len
    raw.response.addr, raw.response.len = response, response_len
    return raw


def test_request_over_0x1000_is_emsgsize(pair: Pair) -> None:
    # A well-formed ExtendPCR one byte too long: refused by the driver, so PCR 30 stays zero.
    request = encode_request(ExtendPCR(30, b"\x5a" * (0x1000 - 10)))
    request = encode_request(ExtendPCR(30, b"\x5a" * (0x1000 - 10 + 0x1001 - len(request))))
    assert len(request) == 0x1001
    with pytest.raises(DeviceError) as refused:
        raw_ioctl(pair.fd, request)
    assert refused.value.errno == errno.EMSGSIZE
    # Absurd lengths too, whatever the pointer: the length is checked first.
    response = ffi.new("uint8_t[]", NSM_RESPONSE_MAX_SIZE)
    raw = nsm_raw(UNMAPPED, 1 << 63, int(ffi.cast("uintptr_t", response)), len(response))
    assert ioctl_errno(pair.fd, NSM_IOCTL_RAW, raw) == errno.EMSGSIZE
    assert pair.both(Nsm.describe_pcr, 30) == (PcrState(False, bytes(PCR_SIZE)),) * 2


def test_short_response_buffer_is_truncated_silently(pair: Pair) -> None:
    request = encode_request(DescribeNSM())
    full = raw_ioctl(pair.fd, request)
    decode_response(full)  # the whole answer decodes
    for size in (0, 1, 10, len(full) - 1):
        assert raw_ioctl(pair.fd, request, response_size=size) == full[:size], size
    # A buffer larger than the device's 0x3000 is fine; response.len is the answer's length.
    assert raw_ioctl(pair.fd, request, response_size=2 * NSM_RESPONSE_MAX_SIZE) == full


def test_unreadable_request_is_efault(pair: Pair) -> None:
    response = ffi.new("uint8_t[]", NSM_RESPONSE_MAX_SIZE)
    for address in (UNMAPPED, KERNEL_ADDRESS):
        raw = nsm_raw(address, 16, int(ffi.cast("uintptr_t", response)), len(response))
        assert ioctl_errno(pair.fd, NSM_IOCTL_RAW, raw) == errno.EFAULT, hex(address)
        assert raw.response.len == len(response), "response.len is written only on success"


def test_unwritable_response_runs_the_request_then_efault(pair: Pair) -> None:
    data = b"extended, answer lost"
    request = encode_request(ExtendPCR(29, data))
    buffer = ffi.from_buffer("uint8_t[]", request)
    for address in (0, UNMAPPED):
        raw = nsm_raw(int(ffi.cast("uintptr_t", buffer)), len(request), address, 0x3000)
        assert ioctl_errno(pair.fd, NSM_IOCTL_RAW, raw) == errno.EFAULT, hex(address)
    # Both requests ran: PCR 29 was extended twice although neither caller saw an answer.
    expected = hashlib.sha384(hashlib.sha384(bytes(PCR_SIZE) + data).digest() + data).digest()
    pair.emulator.extend_pcr(29, data)
    pair.emulator.extend_pcr(29, data)
    assert pair.both(Nsm.describe_pcr, 29) == (PcrState(False, expected),) * 2


# Every number here reaches nsm_dev_ioctl, which accepts exactly NSM_IOCTL_RAW.
OTHER_NUMBERS = {
    "zero": 0,
    "NSM nr 1": ioc_iowr(NSM_MAGIC, 1, 32),
    "NSM nr 0 with a 16-byte struct": ioc_iowr(NSM_MAGIC, 0, 16),
    "NSM nr 0 read-only direction": NSM_IOCTL_RAW & ~(1 << 30),
    "NSM nr 0 write-only direction": NSM_IOCTL_RAW & ~(2 << 30),
    "TCGETS": 0x5401,
    # FIONREAD is answered by the VFS for regular files only; a character device gets the driver.
    "FIONREAD": 0x541B,
}


@pytest.mark.parametrize("number", OTHER_NUMBERS.values(), ids=OTHER_NUMBERS.keys())
def test_other_ioctl_numbers_are_einval(pair: Pair, number: int) -> None:
    arg = ffi.new("uint8_t[]", 64)
    assert ioctl_errno(pair.fd, number, arg) == errno.EINVAL


def test_generic_ioctls_never_reach_the_driver(pair: Pair) -> None:
    # FIOCLEX / FIONCLEX are handled by the VFS for every file: they succeed on /dev/nsm.
    fd = os.open(DEVICE_PATH, os.O_RDONLY)
    try:
        assert ioctl_errno(fd, 0x5451, ffi.NULL) == 0  # FIOCLEX
        assert not os.get_inheritable(fd)
        assert ioctl_errno(fd, 0x5450, ffi.NULL) == 0  # FIONCLEX
        assert os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_the_device_node(pair: Pair) -> None:
    info = os.stat(DEVICE_PATH)
    assert stat.S_ISCHR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o666
    assert os.major(info.st_rdev) == 10, "a misc device"
    assert os.access(DEVICE_PATH, os.R_OK | os.W_OK)
    assert os.fstat(pair.fd).st_rdev == info.st_rdev
    # No read or write handler: the VFS refuses both with EINVAL, once the open mode allows
    # them at all (write on the read-only fd is EBADF before the VFS looks for a handler).
    fd = os.open(DEVICE_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        for call, want in (
            (lambda: os.read(fd, 16), errno.EINVAL),
            (lambda: os.write(fd, b"\x00"), errno.EINVAL),
            (lambda: os.write(pair.fd, b"\x00"), errno.EBADF),
        ):
            with pytest.raises(OSError) as refused:
                call()
            assert refused.value.errno == want
    finally:
        os.close(fd)
    # Write access is never needed: the driver has no open handler and checks no mode.
    describe = encode_request(DescribeNSM())
    expected = raw_ioctl(pair.fd, describe)
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        fd = os.open(DEVICE_PATH, flags | os.O_CLOEXEC)
        try:
            assert raw_ioctl(fd, describe) == expected, flags
        finally:
            os.close(fd)


def test_every_fd_for_the_node_reaches_the_driver(pair: Pair) -> None:
    describe = encode_request(DescribeNSM())
    expected = raw_ioctl(pair.fd, describe)
    fds = [os.dup(pair.fd), os.open("/dev//nsm", os.O_RDONLY | os.O_CLOEXEC)]  # F_DUPFD_CLOEXEC
    fds.append(os.dup2(fds[0], 100, inheritable=False))  # dup3
    try:
        for fd in fds:
            assert raw_ioctl(fd, describe) == expected, fd
        # Inherited across exec: another program asks through our fd.
        script = (
            "import sys; from nsm.device import raw_ioctl; "
            "sys.stdout.write(raw_ioctl(int(sys.argv[1]), bytes.fromhex(sys.argv[2])).hex())"
        )
        inheritable = os.dup(pair.fd)
        os.set_inheritable(inheritable, True)
        fds.append(inheritable)
        done = subprocess.run(
            [sys.executable, "-c", script, str(inheritable), describe.hex()],
            pass_fds=[inheritable],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        assert bytes.fromhex(done.stdout) == expected
    finally:
        for fd in fds:
            os.close(fd)


def test_pcr_index_past_max_pcrs_reaches_the_device(pair: Pair) -> None:
    # The client refuses index >= 32 itself; the raw request shows what the module answers.
    device, emulator = pair.raw(encode_request(DescribePCR(40)))
    assert device == emulator


def test_unreadable_argument_struct_is_efault(pair: Pair) -> None:
    # Last in this file: some driver versions unlocked the device mutex they had not taken on
    # this path (fixed by "misc: nsm: only unlock nsm_dev on post-lock error paths"). The
    # requests after it show the driver still answers.
    for address in (0, UNMAPPED, KERNEL_ADDRESS):
        arg = ffi.cast("void *", address)
        assert ioctl_errno(pair.fd, NSM_IOCTL_RAW, arg) == errno.EFAULT, hex(address)
    device, emulator = pair.both(Nsm.describe_pcr, 31)
    assert device == emulator
