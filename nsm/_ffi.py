"""The C side of `/dev/nsm`: the ioctl structs and libc's `ioctl`, through cffi in ABI mode.

ABI mode (`dlopen`) needs no compiler at install time. The layout below is the UAPI header
`include/uapi/linux/nsm.h` (Linux 6.8 and later); the number is recomputed from the `_IOWR`
arithmetic so that a typo in either the struct or the constant fails at import.
"""

from __future__ import annotations

from typing import Any

import cffi

__all__ = [
    "NSM_IOCTL_RAW",
    "NSM_MAGIC",
    "NSM_RAW_SIZE",
    "NSM_REQUEST_MAX_SIZE",
    "NSM_RESPONSE_MAX_SIZE",
    "ffi",
    "ioc_iowr",
    "lib",
]

_CDEF = """
struct nsm_iovec { uint64_t addr; uint64_t len; };
struct nsm_raw { struct nsm_iovec request; struct nsm_iovec response; };
int ioctl(int fd, unsigned long request, ...);
"""

#: The one FFI instance of the package; `lib` is the C library already loaded in this process.
#: `dlopen(None)` resolves through the process's global scope, so an LD_PRELOAD library
#: (nsm/shim) that defines `ioctl` is found before libc, exactly as for a C program.
ffi: Any = cffi.FFI()
ffi.cdef(_CDEF)
lib: Any = ffi.dlopen(None)

#: NSM_MAGIC in include/uapi/linux/nsm.h.
NSM_MAGIC = 0x0A
#: NSM_REQUEST_MAX_SIZE in drivers/misc/nsm.c: more is refused with EMSGSIZE (nsm_dev_ioctl).
NSM_REQUEST_MAX_SIZE = 0x1000
#: NSM_RESPONSE_MAX_SIZE: the buffer the device always writes into (drivers/misc/nsm.c).
NSM_RESPONSE_MAX_SIZE = 0x3000
#: sizeof(struct nsm_raw): two {u64 addr, u64 len} iovecs.
NSM_RAW_SIZE: int = ffi.sizeof("struct nsm_raw")

# asm-generic/ioctl.h, the layout of both architectures Nitro enclaves run on (x86_64, aarch64):
# nr in bits 0-7, type in 8-15, size in 16-29, direction in 30-31.
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_SIZEBITS = 14
_IOC_WRITE = 1
_IOC_READ = 2


def ioc_iowr(type_: int, nr: int, size: int) -> int:
    """`_IOWR(type, nr, size)` from asm-generic/ioctl.h."""
    if not 0 <= size < 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (
        ((_IOC_READ | _IOC_WRITE) << _IOC_DIRSHIFT)
        | (size << _IOC_SIZESHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
    )


#: NSM_IOCTL_RAW = _IOWR(NSM_MAGIC, 0x0, struct nsm_raw) (include/uapi/linux/nsm.h).
NSM_IOCTL_RAW = 0xC0200A00

# Not an `assert`: asserts vanish under `python -O`, and a wrong number here would send every
# request to the kernel as an unknown command (EINVAL) with no hint why.
if ioc_iowr(NSM_MAGIC, 0, NSM_RAW_SIZE) != NSM_IOCTL_RAW or NSM_RAW_SIZE != 32:
    raise ImportError(
        f"struct nsm_raw is {NSM_RAW_SIZE} bytes and _IOWR gives "
        f"{ioc_iowr(NSM_MAGIC, 0, NSM_RAW_SIZE):#x}; expected 32 bytes and {NSM_IOCTL_RAW:#x}"
    )
