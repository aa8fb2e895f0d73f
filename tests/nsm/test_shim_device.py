"""The shim's fd behaves like the kernel's misc device, not like the socket behind it.

Each point has a C program of its own in tests/nsm/c/, built here with the system compiler in
two variants (plain, and with 64-bit file offsets, which calls the `*64` symbols), run with the
shim preloaded against the fake NSM, and printing one `NAME RC ERRNO` line per check. What the
kernel does is read from drivers/misc/nsm.c (Linux 6.12) and the VFS: no read/write operations,
copy_from_user/copy_to_user faults as EFAULT, the response copied back after the request ran.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.nsm.shimtools import FakeNsmServer, Handler, compile_c, run_in_shim

C_DIR = Path(__file__).parent / "c"
OK = "0 0"
_VARIANTS = {"plain": (), "largefile": ("-D_FILE_OFFSET_BITS=64",)}


def fails(code: int) -> str:
    return f"-1 {code}"


def echo(request: bytes) -> bytes:
    return b"re:" + request


#: `run_c(name, variant, *args)`: the program's report, and the fake NSM it talked to.
RunC = Callable[..., tuple[dict[str, str], FakeNsmServer]]


@pytest.fixture
def run_c(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> RunC:
    """Build tests/nsm/c/NAME.c, run it under the shim against a fresh echoing fake NSM."""

    def run(name: str, variant: str, *args: str) -> tuple[dict[str, str], FakeNsmServer]:
        program = compile_c(
            (C_DIR / f"{name}.c").read_text(), tmp_path / name, f"-I{C_DIR}", *_VARIANTS[variant]
        )
        server = serve(echo)
        result = subprocess.run(
            [str(program), *args],
            env=shim_env(socket_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        report: dict[str, str] = {}
        for line in result.stdout.splitlines():
            check, _, value = line.partition(" ")
            assert check not in report, f"{check} reported twice"
            report[check] = value
        return report, server

    return run


variants = pytest.mark.parametrize("variant", sorted(_VARIANTS))


@variants
def test_dup_copies_are_the_device(variant: str, run_c: RunC) -> None:
    got, server = run_c("dup", variant)
    assert int(got.pop("open").split()[0]) >= 0
    assert got == {
        "dup": OK,
        "dup2": OK,
        "dup3": OK,
        "dup3_cloexec": "1 0",
        "f_dupfd": OK,
        "f_dupfd_cloexec": OK,
        "dup2_same": OK,
        "close_original": OK,
        "after_close": OK,
        "dup2_over": "100 0",
        # the number now names a pipe: its own ioctl answers, and nothing reaches the module
        "replaced": fails(errno.ENOTTY),
        "others_live": OK,
        "close_all": OK,
    }
    assert server.requests == [
        b"dup",
        b"dup2",
        b"dup3",
        b"f_dupfd",
        b"f_dupfd_cloexec",
        b"dup2_same",
        b"after_close",
        b"others_live",
    ]


@variants
def test_fd_inherited_across_exec_is_the_device(variant: str, run_c: RunC) -> None:
    got, server = run_c("exec", variant)
    assert got == {
        "parent": OK,
        "child_ioctl": OK,
        "child_fstat": OK,
        "child_read": fails(errno.EINVAL),
        "child_cloexec_gone": fails(errno.EBADF),
        "child_dup": OK,
        "child_status": OK,
        "parent_after": OK,
    }
    assert server.requests == [b"parent", b"child", b"child_dup", b"parent_after"]
    # two opens in the parent; the exec'd child connects on its own instead of sharing a stream
    assert server.accepted == 3


@variants
def test_fstat_and_stat_report_the_misc_character_device(variant: str, run_c: RunC) -> None:
    got, _ = run_c("stat", variant)
    node = got["fstat"]
    assert node.startswith("chr=1 mode=666 rdev=10:260 uid=0 ")
    assert node.endswith(" size=0")
    # the fd and every path form describe the same node (same inode)
    for check in ("stat", "lstat", "fstatat", "fstatat_empty"):
        assert got[check] == node, check
    assert got["statx"] == "chr=1 mode=666 rdev=10:260"
    assert got["statx_fd"] == "chr=1 rdev=10:260"
    assert got["getfl"] == "0 1 2 nonblock=1"
    assert got["ioctl_after"] == OK


@variants
def test_read_and_write_fail_like_a_driver_without_them(variant: str, run_c: RunC) -> None:
    got, server = run_c("readwrite", variant)
    einval, ebadf = fails(errno.EINVAL), fails(errno.EBADF)
    assert got == {
        "read_ro": einval,
        "read_ro_zero": einval,
        "read_wo": ebadf,
        "read_rw": einval,
        "write_ro": ebadf,
        "write_wo": einval,
        "write_rw": einval,
        "readv_rw": einval,
        "writev_rw": einval,
        "pread_rw": einval,
        "pwrite_rw": einval,
        "preadv_rw": einval,
        "pwritev_rw": einval,
        "ioctl_ro": OK,
        "ioctl_wo": OK,
        "ioctl_rw": OK,
    }
    # no written byte reached the module's stream
    assert server.requests == [b"ioctl_ro", b"ioctl_wo", b"ioctl_rw"]


@variants
def test_every_spelling_of_the_path_is_the_device(
    variant: str, run_c: RunC, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "devlink").symlink_to("/dev")
    got, server = run_c("paths", variant, str(scratch))
    opened = [
        "double_slash",
        "leading_slashes",
        "dot",
        "dotdot",
        "symlinked_dir",
        "dirfd_relative",
        "root_relative",
        "cwd_relative",
        "cwd_dot",
        "o_creat",
    ]
    assert got == {
        "access_f": OK,
        "access_rw": OK,
        "access_x": fails(errno.EACCES),  # mode 0666: no execute bit, even for root
        "faccessat": OK,
        "faccessat_eaccess": OK,
        "stat_double_slash": OK,
        "stat_trailing_slash": fails(errno.ENOTDIR),
        "stat_missing": fails(errno.ENOENT),
        "chdir": OK,
        "trailing_slash": fails(errno.ENOTDIR),
        "o_directory": fails(errno.ENOTDIR),
        "o_creat_excl": fails(errno.EEXIST),
        **dict.fromkeys(opened, OK),
    }
    assert server.requests == [name.encode() for name in opened]


@variants
def test_bad_pointers_fault_and_late_faults_follow_the_request(variant: str, run_c: RunC) -> None:
    got, server = run_c("badptr", variant)
    efault = fails(errno.EFAULT)
    assert got == {
        "struct_null": efault,
        "struct_bad": efault,
        "struct_straddle": efault,
        "request_bad": efault,
        "request_straddle": efault,
        "response_null": efault,
        "response_bad": efault,
        "response_readonly": efault,
        "response_null_empty": OK,
        "struct_readonly": efault,
        "still_works": OK,
    }
    # The driver copies the request in before it runs and the answer out after: only the cases
    # whose fault is on the way back reached the module.
    assert server.requests == [
        b"response_null",
        b"response_bad",
        b"response_readonly",
        b"response_null_empty",
        b"struct_readonly",
        b"still_works",
    ]


def test_python_sees_the_device_node(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
) -> None:
    """CPython calls the 64-bit symbols (stat64, fstat64, fcntl64) and dups with F_DUPFD_CLOEXEC."""
    server = serve(echo)
    result = run_in_shim(
        """
import json, os, stat
from nsm.device import raw_ioctl
fd = os.open("/dev/nsm", os.O_RDONLY)
copy = os.dup(fd)
os.close(fd)
st = os.stat("/dev//nsm")
try:
    os.read(copy, 1)
    read = 0
except OSError as exc:
    read = exc.errno
print(json.dumps({
    "exists": os.path.exists("/dev/nsm"),
    "chr": stat.S_ISCHR(st.st_mode),
    "rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)],
    "same": os.fstat(copy).st_ino == st.st_ino,
    "access": os.access("/dev/nsm", os.R_OK | os.W_OK),
    "read": read,
    "answer": raw_ioctl(copy, b"py").decode(),
}))
""",
        shim_env(socket_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        '{"exists": true, "chr": true, "rdev": [10, 260], "same": true, "access": true, '
        f'"read": {errno.EINVAL}, "answer": "re:py"}}'
    )
    assert server.requests == [b"py"]
