"""The `/dev/nsm` transport: one NSM_IOCTL_RAW ioctl per request, through cffi.

Inside an enclave this is the kernel driver (drivers/misc/nsm.c). Off-enclave the same code path
runs against the emulator when the process is started with the LD_PRELOAD shim (nsm/shim).

Fork: a transport is reopened in the child, never shared with the parent. Two reasons, one per
backend. The lock: a fork copies it in whatever state it was, so if another thread of the parent
was inside `exchange` the child's copy is locked forever; it must be replaced. The fd: the kernel
driver keeps no per-file state, so sharing it would be harmless there, but under the shim the fd
is a stream socket, and two processes writing frames to one connection corrupt each other's
answers. Reopening is correct for both, while merely resetting the lock is only correct for the
kernel. It happens in an `os.register_at_fork` hook, which runs in the child before any other
Python code, while the inherited fd number is certainly still ours to close; a pid check in
`exchange` covers forks that bypass the hooks (a C extension calling fork()), and there the
inherited fd is abandoned rather than closed, since by then its number may have been reused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import weakref
from types import TracebackType
from typing import Final

from nsm._ffi import NSM_IOCTL_RAW, NSM_RESPONSE_MAX_SIZE, ffi, lib
from nsm._transport import check_request_size
from nsm.errors import DeviceError, DeviceNotFound, TransportError

__all__ = ["DEVICE_PATH", "DeviceTransport", "raw_ioctl"]

#: The misc device the driver registers (name "nsm", Linux drivers/misc/nsm.c).
DEVICE_PATH: Final = "/dev/nsm"

# What each errno means when it comes from this ioctl, per drivers/misc/nsm.c (in-tree), the
# older nsm-driver/nsm.c (aws-nitro-enclaves-sdk-bootstrap), and the shim.
_IOCTL_ERRORS: Final[dict[int, str]] = {
    errno.EMSGSIZE: "the request is larger than the 4096 bytes the NSM accepts",
    errno.EINVAL: "the driver does not know this ioctl command (is this file really the NSM?)",
    errno.ENOTTY: "this file is not the NSM device",
    errno.ETIMEDOUT: "the NSM did not answer within the driver's 120-second timeout",
    errno.EIO: "the driver could not reach the NSM (under the shim: the emulator connection "
    "failed or sent an oversize answer)",
    errno.ENODATA: "the NSM handed back the wrong virtqueue buffer",
    errno.EFAULT: "the driver could not copy a request or response buffer",
    errno.ENOMEM: "the driver could not allocate memory for the message",
    errno.ENXIO: "the NSM virtio device is not present",
    errno.EBADF: "the NSM file descriptor is not open",
}


def _explain(err: int) -> str:
    reason = _IOCTL_ERRORS.get(err, os.strerror(err))
    return f"NSM ioctl failed: {reason}"


def raw_ioctl(fd: int, request: bytes, *, response_size: int = NSM_RESPONSE_MAX_SIZE) -> bytes:
    """One NSM_IOCTL_RAW on `fd`; the answer's first `response.len` bytes.

    No size check here: `DeviceTransport.exchange` checks first. `response_size` is the buffer
    offered to the driver; the driver truncates a longer answer to it silently (nsm.c), so anything
    but the default is only useful to test exactly that.
    """
    # Both buffers and the struct are locals, so they stay alive until the call returns;
    # from_buffer keeps `request` itself alive and points into it without a copy.
    req_buf = ffi.from_buffer("uint8_t[]", request)
    resp_buf = ffi.new("uint8_t[]", response_size)
    raw = ffi.new("struct nsm_raw *")
    raw.request.addr = int(ffi.cast("uintptr_t", req_buf))
    raw.request.len = len(req_buf)
    raw.response.addr = int(ffi.cast("uintptr_t", resp_buf))
    raw.response.len = response_size
    while True:
        # `raw` is a typed `struct nsm_raw *` cdata, as a variadic argument must be in ABI mode.
        # cffi releases the GIL for the call, so other threads run while the NSM works.
        rc = int(lib.ioctl(fd, NSM_IOCTL_RAW, raw))
        if rc >= 0:
            break
        err = int(ffi.errno)
        # Safe to repeat: both drivers lock and wait uninterruptibly (mutex_lock, then
        # wait_for_completion_io_timeout in drivers/misc/nsm.c, wait_event_timeout in the older
        # nsm-driver), so an EINTR can only come before anything was sent. Looping back through
        # the interpreter also runs Python signal handlers, so Ctrl-C still interrupts (PEP 475).
        if err != errno.EINTR:
            raise DeviceError(err, _explain(err))
    n = int(raw.response.len)
    if n > response_size:
        raise TransportError(
            f"the NSM driver reported a {n}-byte answer in a {response_size}-byte buffer"
        )
    return bytes(ffi.buffer(resp_buf, n))


def _open(path: str) -> int:
    try:
        # The driver has no open handler and never checks the mode: read-only suffices (nsm.c).
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceNotFound(path) from None
    except OSError as exc:
        raise DeviceError(exc.errno or 0, f"cannot open {path}: {exc.strerror or exc}") from exc


class DeviceTransport:
    """The NSM through its device node. Thread-safe; one request at a time per instance."""

    def __init__(self, path: str | os.PathLike[str] = DEVICE_PATH) -> None:
        self._path = os.fspath(path)
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        # Opened now, so that "not in an enclave" is reported where the transport is made.
        self._fd: int | None = _open(self._path)
        _LIVE.add(self)

    @classmethod
    def open(cls, path: str | os.PathLike[str] = DEVICE_PATH) -> DeviceTransport:
        return cls(path)

    @property
    def path(self) -> str:
        return self._path

    @property
    def closed(self) -> bool:
        return self._closed

    def exchange(self, request: bytes) -> bytes:
        check_request_size(request)
        self._check_pid()
        with self._lock:
            if self._closed:
                raise TransportError(f"the NSM transport for {self._path} is closed")
            if self._fd is None:
                self._fd = _open(self._path)
            return raw_ioctl(self._fd, request)

    def close(self) -> None:
        self._check_pid()
        # Under the lock: an exchange in flight on another thread finishes before its fd goes,
        # so the number cannot be reused under it.
        with self._lock:
            self._closed = True
            fd, self._fd = self._fd, None
        if fd is not None:
            _close_quietly(fd)

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            with _REINIT_LOCK:
                if self._pid != os.getpid():
                    self._reinit_in_child(close_inherited=False)

    def _reinit_in_child(self, *, close_inherited: bool) -> None:
        self._lock = threading.Lock()
        fd, self._fd = self._fd, None
        if close_inherited and fd is not None:
            _close_quietly(fd)
        self._pid = os.getpid()

    def __enter__(self) -> DeviceTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<DeviceTransport {self._path} {state}>"


def _close_quietly(fd: int) -> None:
    # Linux always releases the fd, even when close reports an error (EINTR, EIO), and no data
    # is buffered on this fd, so there is nothing to report or retry.
    with contextlib.suppress(OSError):
        os.close(fd)


# Every open transport, so that the at-fork hook can reach them; weak, so this is no leak.
_LIVE: weakref.WeakSet[DeviceTransport] = weakref.WeakSet()
# Guards the pid-check path only; replaced in the child for the same reason as the locks.
_REINIT_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _REINIT_LOCK
    _REINIT_LOCK = threading.Lock()
    # Closed ones too: their lock may have been copied held by a close() in progress.
    for transport in list(_LIVE):
        transport._reinit_in_child(close_inherited=True)


os.register_at_fork(after_in_child=_after_fork_in_child)
