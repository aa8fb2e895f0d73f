"""The LD_PRELOAD shim that routes `/dev/nsm` to the emulator's Unix socket, and how to build it.

```sh
nsm emulator serve --socket /tmp/nsm.sock --root-out root.pem &
LIB=$(nsm shim build --out .)       # or: python -c 'import nsm.shim; print(nsm.shim.build("."))'
NSM_EMULATOR=unix:/tmp/nsm.sock LD_PRELOAD=$LIB your-program
```

The library is built from `nsm_preload.c`, shipped beside this file as package data (so it is
found wherever the package is installed: a wheel, `pip install --user`, a checkout), with the
system C compiler; nothing is compiled at install time, so installing needs no compiler. The C
source is a standalone library for apps in any language: it uses nothing from Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from nsm.errors import NsmError

__all__ = ["CFLAGS", "LIBRARY_NAME", "SOURCE", "ShimBuildError", "build", "compiler"]

#: The C source, package data of `nsm.shim`.
SOURCE = Path(__file__).resolve().with_name("nsm_preload.c")
LIBRARY_NAME = "libnsm_preload.so"
#: -Werror keeps the shim warning-free on every compiler CI meets; -ldl for dlsym on glibc < 2.34.
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror")
_LIBS = ("-ldl",)


class ShimBuildError(NsmError):
    """The C compiler is missing or rejected the shim."""


def compiler() -> str | None:
    """The C compiler to use: `$CC` if set, else `cc` on PATH; None if there is none."""
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def build(out_dir: str | os.PathLike[str], *, cc: str | None = None) -> Path:
    """Compile the shim into `out_dir/libnsm_preload.so` and return its path."""
    cc = cc or compiler()
    if cc is None:
        raise ShimBuildError("no C compiler found (set CC or install gcc) to build the NSM shim")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / LIBRARY_NAME
    # Build beside the target and rename: concurrent builds (pytest-xdist, two shells) never
    # load a half-written library.
    fd, tmp_name = tempfile.mkstemp(prefix=".nsm_preload.", suffix=".so", dir=out)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        result = subprocess.run(
            [cc, *CFLAGS, "-o", str(tmp), str(SOURCE), *_LIBS],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ShimBuildError(f"{cc} failed to build the NSM shim:\n{result.stderr.strip()}")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
