"""`/dev/nsm` through cffi, without a device: layout, errors, lifecycle, fork.

The real ioctl path, end to end, is in test_shim.py. Here the transport runs on /dev/null (which
answers every ioctl with ENOTTY) or with `lib` replaced by a fake that plays the driver.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

import nsm
from nsm import _ffi, device
from nsm._ffi import NSM_IOCTL_RAW, ffi
from nsm.device import DeviceTransport
from nsm.errors import ArgumentError, DeviceError, DeviceNotFound, TransportError

NSM_PACKAGE = Path(nsm.__file__).parent


class FakeDriver:
    """Stands in for `lib`: plays the driver's side of NSM_IOCTL_RAW, records each call."""

    def __init__(self, answer: bytes = b"", errnos: tuple[int, ...] = (), reported: int = -1):
        self.answer = answer
        self.errnos = list(errnos)  # failures to give, in order, before answering
        self.reported = reported  # response.len to write back; -1: the true length
        self.calls: list[tuple[int, int, bytes]] = []

    def ioctl(self, fd: int, number: int, raw: Any) -> int:
        request = bytes(ffi.buffer(ffi.cast("uint8_t *", raw.request.addr), raw.request.len))
        self.calls.append((fd, number, request))
        if self.errnos:
            ffi.errno = self.errnos.pop(0)
            return -1
        n = min(len(self.answer), raw.response.len)
        ffi.memmove(ffi.cast("uint8_t *", raw.response.addr), self.answer, n)
        raw.response.len = n if self.reported < 0 else self.reported
        return 0


@pytest.fixture
def null_transport() -> DeviceTransport:
    return DeviceTransport("/dev/null")


# ---- layout --------------------------------------------------------------------------------------


def test_struct_layout_matches_the_uapi_header() -> None:
    assert ffi.sizeof("struct nsm_raw") == 32
    assert ffi.sizeof("struct nsm_iovec") == 16
    assert ffi.offsetof("struct nsm_raw", "request") == 0
    assert ffi.offsetof("struct nsm_raw", "response") == 16
    assert ffi.offsetof("struct nsm_iovec", "addr") == 0
    assert ffi.offsetof("struct nsm_iovec", "len") == 8


def test_ioctl_number_is_iowr_of_the_struct() -> None:
    assert NSM_IOCTL_RAW == 0xC0200A00 == 3223325184
    assert _ffi.ioc_iowr(_ffi.NSM_MAGIC, 0, ffi.sizeof("struct nsm_raw")) == NSM_IOCTL_RAW
    # Each field lands where asm-generic/ioctl.h puts it.
    assert NSM_IOCTL_RAW >> 30 == 3 and (NSM_IOCTL_RAW >> 16) & 0x3FFF == 32
    assert (NSM_IOCTL_RAW >> 8) & 0xFF == 0x0A and NSM_IOCTL_RAW & 0xFF == 0
    assert (_ffi.NSM_REQUEST_MAX_SIZE, _ffi.NSM_RESPONSE_MAX_SIZE) == (0x1000, 0x3000)
    with pytest.raises(ValueError):
        _ffi.ioc_iowr(0x0A, 0, 1 << 14)


def test_ioctl_is_declared_variadic() -> None:
    assert ffi.typeof(_ffi.lib.ioctl).ellipsis


def test_no_python_file_in_nsm_uses_fcntl() -> None:
    # The ioctl goes through cffi only (DESIGN.md). The C shim is not Python and uses fcntl(2)
    # itself, so only Python sources are scanned.
    hits = [
        f"{path.relative_to(NSM_PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(NSM_PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bfcntl\b", line)
    ]
    assert hits == []


# ---- opening -------------------------------------------------------------------------------------


def test_missing_device_names_the_emulator(tmp_path: Path) -> None:
    missing = str(tmp_path / "nsm")
    with pytest.raises(DeviceNotFound) as caught:
        DeviceTransport(missing)
    assert isinstance(caught.value, DeviceError)
    assert caught.value.errno == errno.ENOENT
    message = str(caught.value)
    assert missing in message
    assert "emulator" in message and "NSM_EMULATOR" in message


def test_other_open_errors_keep_their_errno(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DeviceError) as caught:
        DeviceTransport.open(tmp_path / "file" / "nsm")
    assert not isinstance(caught.value, DeviceNotFound)
    assert caught.value.errno == errno.ENOTDIR


# ---- exchange ------------------------------------------------------------------------------------


def test_a_file_that_is_not_the_nsm_gives_a_device_error(null_transport: DeviceTransport) -> None:
    with null_transport, pytest.raises(DeviceError) as caught:
        null_transport.exchange(b"\x6bDescribeNSM")
    assert caught.value.errno == errno.ENOTTY
    assert "not the NSM device" in str(caught.value)


def test_oversize_and_empty_requests_are_rejected_before_any_call(
    null_transport: DeviceTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDriver(answer=b"x")
    monkeypatch.setattr(device, "lib", fake)
    with pytest.raises(ArgumentError, match="4097"):
        null_transport.exchange(bytes(4097))
    with pytest.raises(ArgumentError):
        null_transport.exchange(b"")
    assert fake.calls == []
    assert null_transport.exchange(bytes(4096)) == b"x"
    assert [(n, len(r)) for _, n, r in fake.calls] == [(NSM_IOCTL_RAW, 4096)]


def test_request_bytes_reach_the_driver_and_only_response_len_bytes_return(
    null_transport: DeviceTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDriver(answer=bytes(range(200)))
    monkeypatch.setattr(device, "lib", fake)
    request = bytes(range(256)) * 3
    assert null_transport.exchange(request) == bytes(range(200))
    assert fake.calls[0][2] == request


def test_eintr_is_retried(null_transport: DeviceTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDriver(answer=b"ok", errnos=(errno.EINTR, errno.EINTR))
    monkeypatch.setattr(device, "lib", fake)
    assert null_transport.exchange(b"req") == b"ok"
    assert len(fake.calls) == 3


@pytest.mark.parametrize(
    ("err", "phrase"),
    [
        (errno.EMSGSIZE, "4096 bytes"),
        (errno.EINVAL, "does not know this ioctl"),
        (errno.ETIMEDOUT, "120-second"),
        (errno.EIO, "could not reach the NSM"),
        (errno.EFAULT, "could not copy"),
        (errno.ENODATA, "wrong virtqueue buffer"),
        (errno.EPERM, os.strerror(errno.EPERM)),
    ],
)
def test_errnos_are_kept_and_explained(
    null_transport: DeviceTransport, monkeypatch: pytest.MonkeyPatch, err: int, phrase: str
) -> None:
    monkeypatch.setattr(device, "lib", FakeDriver(errnos=(err,)))
    with pytest.raises(DeviceError) as caught:
        null_transport.exchange(b"req")
    assert caught.value.errno == err
    assert phrase in str(caught.value)
    assert errno.errorcode[err] in str(caught.value)


def test_a_response_len_past_the_buffer_is_never_read(
    null_transport: DeviceTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device, "lib", FakeDriver(answer=b"abc", reported=0x3001))
    with pytest.raises(TransportError, match="12289-byte answer"):
        null_transport.exchange(b"req")


# ---- lifecycle -----------------------------------------------------------------------------------


def test_close_is_idempotent_and_final(null_transport: DeviceTransport) -> None:
    fd = null_transport._fd
    assert fd is not None
    null_transport.close()
    null_transport.close()
    assert null_transport.closed
    with pytest.raises(OSError) as gone:
        os.fstat(fd)
    assert gone.value.errno == errno.EBADF
    with pytest.raises(TransportError, match="closed") as caught:
        null_transport.exchange(b"req")
    assert not isinstance(caught.value, DeviceError)
    assert "closed" in repr(null_transport)


def test_context_manager_closes() -> None:
    with DeviceTransport("/dev/null") as transport:
        assert not transport.closed
    assert transport.closed


def test_fork_child_gets_a_fresh_lock_and_its_own_fd(null_transport: DeviceTransport) -> None:
    parent_fd = null_transport._fd
    assert parent_fd is not None
    read_end, write_end = os.pipe()
    # As if another thread were inside exchange() when the fork happens.
    null_transport._lock.acquire()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            inherited = null_transport._fd
            try:
                null_transport.exchange(b"req")  # would deadlock on a copied, held lock
            except DeviceError as exc:
                outcome = exc.errno
            report = [inherited, outcome, null_transport._fd is not None]
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    null_transport._lock.release()
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = json.loads(os.read(read_end, 1000))
    os.close(read_end)
    assert status == 0
    assert report == [None, errno.ENOTTY, True]
    assert null_transport._fd == parent_fd  # the parent's own fd is untouched
    os.fstat(parent_fd)
    null_transport.close()


def test_pid_change_without_fork_hooks_abandons_the_inherited_fd(
    null_transport: DeviceTransport,
) -> None:
    # A fork the at-fork hooks did not see (fork() from C): the inherited number may have been
    # reused by then, so it is left alone and a new fd is opened.
    inherited = null_transport._fd
    assert inherited is not None
    null_transport._pid = -1
    with pytest.raises(DeviceError):
        null_transport.exchange(b"req")
    assert null_transport._pid == os.getpid()
    assert null_transport._fd not in (None, inherited)
    os.fstat(inherited)  # still open: not closed behind anyone's back
    os.close(inherited)
    null_transport.close()
