"""The LD_PRELOAD shim: the real cffi device path, end to end, against a fake NSM server.

Each test runs a fresh `python -c` (or a small C program) with the shim preloaded, because the
shim must be in place before libc's open/ioctl/close are first bound.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest

from tests.nsm.shimtools import (
    FakeNsmServer,
    Handler,
    RawReply,
    compile_c,
    run_in_shim,
)

# ---- helpers -------------------------------------------------------------------------------------

_PRELUDE = """\
import errno, json, os, sys, threading
from nsm import _ffi
from nsm._ffi import ffi, lib, NSM_IOCTL_RAW
from nsm.device import DeviceTransport, raw_ioctl
from nsm.errors import ArgumentError, DeviceError, DeviceNotFound, TransportError
def out(**kw):
    print(json.dumps(kw))
"""


def run_json(code: str, env: dict[str, str]) -> dict[str, Any]:
    """Run the prelude + code in a shimmed Python; return the JSON object it printed last."""
    result = run_in_shim(_PRELUDE + textwrap.dedent(code), env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    parsed: dict[str, Any] = json.loads(lines[-1])
    return parsed


def answer_for(request: bytes) -> bytes:
    """A deterministic answer of varied length, up to the full 0x3000 buffer."""
    return (hashlib.sha384(request).digest() * 256)[: min(0x3000, 3 * len(request) + 1)]


def echo(request: bytes) -> bytes:
    return b"re:" + request


# ---- the build -----------------------------------------------------------------------------------


def test_shim_exports_every_entry_point(shim_lib: Path) -> None:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm (binutils) to list the shim's symbols")
    listing = subprocess.run(
        [nm, "-D", "--defined-only", str(shim_lib)], capture_output=True, text=True, check=True
    ).stdout
    exported = {line.split()[-1] for line in listing.splitlines() if " T " in line}
    assert {
        "open",
        "open64",
        "openat",
        "openat64",
        "__open_2",
        "__open64_2",
        "__openat_2",
        "__openat64_2",
        "close",
        "close_range",
        "ioctl",
        "dup",
        "dup2",
        "dup3",
        "fcntl",
        "fcntl64",
        "read",
        "write",
        "readv",
        "writev",
        "pread64",
        "pwrite64",
        "fstat",
        "fstat64",
        "stat",
        "stat64",
        "lstat",
        "lstat64",
        "fstatat",
        "fstatat64",
        "statx",
        "access",
        "faccessat",
    } <= exported


# ---- the Python device path through the shim ---------------------------------------------------


def test_requests_and_answers_are_byte_exact(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
) -> None:
    server = serve(answer_for)
    requests = [
        cbor2.dumps("DescribeNSM"),
        cbor2.dumps({"ExtendPCR": {"index": 16, "data": b"\x00\xff" * 24}}),
        bytes(range(256)),
        b"\x00",
        bytes((i * 7 + 3) % 256 for i in range(0x1000)),  # the largest request, answered in full
    ]
    got = run_json(
        f"""
        requests = [bytes.fromhex(h) for h in {[r.hex() for r in requests]!r}]
        with DeviceTransport("/dev/nsm") as t:
            answers = [t.exchange(r).hex() for r in requests]
        out(answers=answers)
        """,
        shim_env(socket_path),
    )
    assert server.requests == requests
    assert [bytes.fromhex(a) for a in got["answers"]] == [answer_for(r) for r in requests]
    assert len(answer_for(requests[-1])) == 0x3000
    assert server.accepted == 1


def test_oversize_request_fails_with_emsgsize_at_the_ioctl(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
) -> None:
    server = serve(echo)
    got = run_json(
        """
        t = DeviceTransport("/dev/nsm")
        try:
            t.exchange(bytes(4097))
        except ArgumentError:
            python_check = "ArgumentError"
        fd = os.open("/dev/nsm", os.O_RDONLY)
        try:
            raw_ioctl(fd, bytes(4097))  # no Python pre-check: the shim must refuse it
        except DeviceError as exc:
            ioctl_errno, message = exc.errno, str(exc)
        ok = raw_ioctl(fd, bytes(4096))
        out(python_check=python_check, ioctl_errno=ioctl_errno, message=message, ok=len(ok))
        """,
        shim_env(socket_path),
    )
    assert got["python_check"] == "ArgumentError"
    assert got["ioctl_errno"] == errno.EMSGSIZE
    assert "4096" in got["message"]
    assert got["ok"] == 4099
    assert server.requests == [bytes(4096)]  # the oversize one never left the process


def test_small_response_buffer_is_silently_truncated(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
) -> None:
    answer = bytes(range(100))
    serve(lambda _request: answer)
    got = run_json(
        """
        fd = os.open("/dev/nsm", os.O_RDONLY)
        req = ffi.new("uint8_t[]", b"trunc")
        resp = ffi.new("uint8_t[]", [0xEE] * 64)
        raw = ffi.new("struct nsm_raw *")
        raw.request.addr = int(ffi.cast("uintptr_t", req))
        raw.request.len = 5
        raw.response.addr = int(ffi.cast("uintptr_t", resp))
        raw.response.len = 10
        rc = lib.ioctl(fd, NSM_IOCTL_RAW, raw)
        fields = [raw.request.addr == int(ffi.cast("uintptr_t", req)), raw.request.len,
                  raw.response.addr == int(ffi.cast("uintptr_t", resp)), raw.response.len]
        raw.response.len = 0
        rc0 = lib.ioctl(fd, NSM_IOCTL_RAW, raw)
        out(rc=rc, fields=fields, buf=ffi.buffer(resp)[:].hex(), rc0=rc0, len0=raw.response.len,
            helper=raw_ioctl(fd, b"trunc", response_size=7).hex())
        """,
        shim_env(socket_path),
    )
    assert got["rc"] == 0
    assert got["fields"] == [True, 5, True, 10]  # response.len is the only field changed
    assert bytes.fromhex(got["buf"]) == answer[:10] + b"\xee" * 54  # never written past
    assert (got["rc0"], got["len0"]) == (0, 0)
    assert bytes.fromhex(got["helper"]) == answer[:7]


def test_unknown_ioctl_number_is_einval_and_generic_ones_pass(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
) -> None:
    server = serve(echo)
    got = run_json(
        """
        import termios
        fd = os.open("/dev/nsm", os.O_RDONLY)
        req = ffi.new("uint8_t[]", b"x")
        resp = ffi.new("uint8_t[]", 0x3000)
        raw = ffi.new("struct nsm_raw *")
        raw.request.addr = int(ffi.cast("uintptr_t", req))
        raw.request.len = 1
        raw.response.addr = int(ffi.cast("uintptr_t", resp))
        raw.response.len = 0x3000
        def call(number, arg):
            rc = lib.ioctl(fd, number, arg)
            return [rc, ffi.errno if rc < 0 else 0]
        out(
            wrong_nr=call(0xC0200A01, raw),
            wrong_size=call(0xC0180A00, raw),
            fionread=call(termios.FIONREAD, ffi.new("int *")),
            # the kernel's cmd is an unsigned int: bits above 32 never reach the driver
            high_bits=call(0x1_C020_0A00, raw),
            fioclex=call(termios.FIOCLEX, ffi.NULL),
        )
        """,
        shim_env(socket_path),
    )
    assert got["wrong_nr"] == [-1, errno.EINVAL]
    assert got["wrong_size"] == [-1, errno.EINVAL]
    assert got["fionread"] == [-1, errno.EINVAL]
    assert got["high_bits"] == [0, 0]
    assert got["fioclex"] == [0, 0]
    assert server.requests == [b"x"]


def test_close_releases_the_connection_and_is_final(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
) -> None:
    server = serve(echo)
    got = run_json(
        """
        def nfds():
            return len(os.listdir("/proc/self/fd"))
        before_open = nfds()
        t = DeviceTransport("/dev/nsm")
        first = t.exchange(b"one").decode()
        fd = t._fd
        kind = os.readlink(f"/proc/self/fd/{fd}")
        while_open = nfds()
        t.close()
        t.close()
        after_close = nfds()
        try:
            os.fstat(fd)
            fstat = 0
        except OSError as exc:
            fstat = exc.errno
        try:
            t.exchange(b"two")
        except TransportError as exc:
            after = [type(exc).__name__, str(exc)]
        out(first=first, kind=kind, opened=while_open - before_open,
            closed=while_open - after_close, fstat=fstat, after=after)
        """,
        shim_env(socket_path),
    )
    assert got["first"] == "re:one"
    assert got["kind"].startswith("socket:")
    assert got["opened"] == 2  # the program's fd and the shim's private dup of the connection
    assert got["closed"] == 2
    assert got["fstat"] == errno.EBADF
    assert got["after"][0] == "TransportError"
    assert "closed" in got["after"][1]
    assert server.wait_until(lambda s: s.ended == 1)
    assert server.requests == [b"one"]


def test_other_paths_and_fds_are_untouched(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    server = serve(echo)
    got = run_json(
        f"""
        import termios
        nsm_fd = os.open("/dev/nsm", os.O_RDONLY)  # tracked fds exist: the slow path is on
        path = {str(tmp_path / "plain.txt")!r}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, b"hello")
        os.close(fd)
        d = os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY)
        fd = os.open("plain.txt", os.O_RDONLY, dir_fd=d)
        data = os.read(fd, 100).decode()
        mode = oct(os.stat(path).st_mode & 0o777)
        os.close(fd)
        r, w = os.pipe()
        os.write(w, b"12345")
        n = ffi.new("int *")
        rc = lib.ioctl(r, termios.FIONREAD, n)
        errs = {{}}
        root = os.open("/", os.O_RDONLY)
        near = [("/dev/nsmx", {{}}), ("/dev/nsm2/", {{}}), ("dev/nsmx", {{"dir_fd": root}}),
                ("/tmp/nsm", {{}}), ("nsm", {{"dir_fd": d}})]
        for p, kw in near:
            try:
                os.close(os.open(p, os.O_RDONLY, **kw))
                errs[p] = 0
            except OSError as exc:
                errs[p] = exc.errno
        with open(path) as f:
            via_stdio = f.read()
        out(data=data, mode=mode, fionread=[rc, n[0]], errs=errs, via_stdio=via_stdio)
        """,
        shim_env(socket_path),
    )
    assert got["data"] == "hello"
    assert got["via_stdio"] == "hello"
    assert got["mode"] == "0o600"  # the mode argument still reaches the real open
    assert got["fionread"] == [0, 5]
    # Only paths that resolve to /dev/nsm are the NSM (tests/nsm/test_shim_device.py has the
    # spellings that do); near misses reach the real filesystem.
    assert got["errs"] == {
        "/dev/nsmx": errno.ENOENT,
        "/dev/nsm2/": errno.ENOENT,
        "dev/nsmx": errno.ENOENT,
        "/tmp/nsm": errno.ENOENT,
        "nsm": errno.ENOENT,
    }
    assert server.accepted == 1  # the one real /dev/nsm open


def test_missing_or_malformed_emulator_variable(
    shim_env: Callable[..., dict[str, str]], socket_path: Path
) -> None:
    code = _PRELUDE + textwrap.dedent(
        """
        try:
            DeviceTransport("/dev/nsm")
        except DeviceError as exc:
            out(kind=type(exc).__name__, errno=exc.errno, message=str(exc))
        """
    )
    unset = run_in_shim(code, shim_env(None))
    malformed = run_in_shim(code, shim_env(None, extra={"NSM_EMULATOR": "tcp:1.2.3.4:5"}))
    down = run_in_shim(code, shim_env(socket_path))  # nothing listens there
    for result in (unset, malformed):
        got = json.loads(result.stdout)
        assert got["kind"] == "DeviceNotFound"
        assert got["errno"] == errno.ENOENT
        assert "emulator" in got["message"]
        assert len(result.stderr.strip().splitlines()) == 1
        assert "set NSM_EMULATOR=unix:PATH" in result.stderr
    assert "not of that form" in malformed.stderr
    got = json.loads(down.stdout)
    assert (got["kind"], got["errno"]) == ("DeviceError", errno.ENXIO)
    assert f"no NSM emulator at {socket_path}" in down.stderr


def test_broken_peer_gives_eio_then_recovers(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
) -> None:
    def handler(request: bytes) -> bytes | RawReply | None:
        if request == b"hangup":
            return None
        if request == b"oversize":
            return RawReply((0x3001).to_bytes(4, "big") + bytes(0x3001))
        if request == b"partial":
            return RawReply((10).to_bytes(4, "big") + b"abc", hangup=True)
        return echo(request)

    server = serve(handler)
    got = run_json(
        """
        t = DeviceTransport("/dev/nsm")
        results = {}
        for req in [b"hangup", b"ok1", b"oversize", b"ok2", b"partial", b"ok3"]:
            try:
                results[req.decode()] = t.exchange(req).decode()
            except DeviceError as exc:
                results[req.decode()] = exc.errno
        out(**results)
        """,
        shim_env(socket_path),
    )
    assert got == {
        "hangup": errno.EIO,
        "ok1": "re:ok1",
        "oversize": errno.EIO,
        "ok2": "re:ok2",
        "partial": errno.EIO,
        "ok3": "re:ok3",
    }
    assert server.accepted == 4  # each failure drops the stream; the next request reconnects


def test_no_answer_within_the_timeout_is_etimedout(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
) -> None:
    release = threading.Event()

    def handler(request: bytes) -> bytes:
        if request == b"slow":
            release.wait(5)
        return echo(request)

    serve(handler)
    try:
        got = run_json(
            """
            t = DeviceTransport("/dev/nsm")
            try:
                t.exchange(b"slow")
            except DeviceError as exc:
                slow = [exc.errno, str(exc)]
            out(slow=slow, after=t.exchange(b"fast").decode())
            """,
            shim_env(socket_path, extra={"NSM_PRELOAD_TIMEOUT_MS": "200"}),
        )
    finally:
        release.set()
    assert got["slow"][0] == errno.ETIMEDOUT
    assert "120-second" in got["slow"][1]
    assert got["after"] == "re:fast"


def test_concurrent_threads_share_one_transport_safely(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
) -> None:
    server = serve(answer_for)
    got = run_json(
        """
        import hashlib
        shared = DeviceTransport("/dev/nsm")
        own = [DeviceTransport("/dev/nsm") for _ in range(2)]
        bad = []
        def work(t, tag):
            for i in range(25):
                req = f"{tag}-{i}".encode() * (i + 1)
                want = (hashlib.sha384(req).digest() * 256)[: min(0x3000, 3 * len(req) + 1)]
                if t.exchange(req) != want:
                    bad.append(req)
        threads = [threading.Thread(target=work, args=(shared, f"s{k}")) for k in range(4)]
        threads += [threading.Thread(target=work, args=(t, f"o{k}")) for k, t in enumerate(own)]
        for th in threads: th.start()
        for th in threads: th.join()
        out(bad=len(bad))
        """,
        shim_env(socket_path),
    )
    assert got["bad"] == 0
    assert len(server.requests) == 150
    assert server.accepted == 3


def test_fork_child_gets_its_own_connection(
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
) -> None:
    server = serve(echo)
    got = run_json(
        """
        t = DeviceTransport("/dev/nsm")
        first = t.exchange(b"parent-1").decode()
        r, w = os.pipe()
        t._lock.acquire()  # as if another thread were mid-exchange at the fork
        pid = os.fork()
        if pid == 0:
            try:
                inherited = t._fd  # the at-fork hook closed it before any of this ran
                msg = json.dumps([inherited, t.exchange(b"child").decode()])
            except BaseException as exc:
                msg = json.dumps(["error", repr(exc)])
            os.write(w, msg.encode())
            os._exit(0)
        t._lock.release()
        os.close(w)
        _, status = os.waitpid(pid, 0)
        child = json.loads(os.read(r, 4096))
        out(first=first, child=child, status=status, last=t.exchange(b"parent-2").decode())
        """,
        shim_env(socket_path),
    )
    assert got["first"] == "re:parent-1"
    assert got["child"][1] == "re:child"
    assert got["child"][0] is None  # not shared: the child reopened the device
    assert got["status"] == 0
    assert got["last"] == "re:parent-2"
    assert server.accepted == 2
    assert sorted(server.requests) == [b"child", b"parent-1", b"parent-2"]


# ---- a C program through the shim ----------------------------------------------------------------

_C_CLIENT = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

struct nsm_iovec { uint64_t addr; uint64_t len; };
struct nsm_raw { struct nsm_iovec request; struct nsm_iovec response; };

static int ask(int fd, const char *msg)
{
    static uint8_t resp[0x3000];
    struct nsm_raw raw = {{(uintptr_t)msg, strlen(msg)}, {(uintptr_t)resp, sizeof(resp)}};
    if (ioctl(fd, 0xC0200A00, &raw) != 0) {
        printf("%s error %d\n", msg, errno);
        return 1;
    }
    printf("%s %.*s\n", msg, (int)raw.response.len, (const char *)resp);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 3)
        return 2;
    /* Flags from argv: not constant, so a fortified build calls __open_2 and __openat_2. */
    int flags = atoi(argv[1]);
    int dir = open(argv[2], O_RDONLY | O_DIRECTORY);
    int fds[3] = {
        open("/dev/nsm", flags),
        openat(AT_FDCWD, "/dev/nsm", flags),
        openat(dir, "/dev/nsm", flags),
    };
    const char *names[3] = {"open", "openat-cwd", "openat-dir"};
    int bad = 0;
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0) {
            printf("%s open-error %d\n", names[i], errno);
            return 1;
        }
        printf("%s cloexec %d\n", names[i], (fcntl(fds[i], F_GETFD) & FD_CLOEXEC) != 0);
        bad |= ask(fds[i], names[i]);
    }
    int plain = open("/dev/nsm", O_RDONLY);
    printf("plain cloexec %d\n", (fcntl(plain, F_GETFD) & FD_CLOEXEC) != 0);
    bad |= ask(plain, "plain");
    pid_t pid = fork();
    if (pid == 0)
        _exit(ask(fds[0], "child"));
    int status = 0;
    waitpid(pid, &status, 0);
    bad |= status != 0;
    bad |= ask(fds[0], "after-fork");
    for (int i = 0; i < 3; i++)
        bad |= close(fds[i]) != 0;
    bad |= close(plain) != 0;
    bad |= close(dir) != 0;
    printf("done %d\n", bad);
    return bad;
}
"""

_C_VARIANTS = {
    "plain": ((), {"open", "openat"}),
    "largefile": (("-D_FILE_OFFSET_BITS=64",), {"open64", "openat64"}),
    "fortify": (("-O2", "-D_FORTIFY_SOURCE=2"), {"__open_2", "__openat_2"}),
    "fortify-largefile": (
        ("-O2", "-D_FORTIFY_SOURCE=2", "-D_FILE_OFFSET_BITS=64"),
        {"__open64_2", "__openat64_2"},
    ),
}


@pytest.mark.parametrize("variant", sorted(_C_VARIANTS))
def test_c_program_uses_the_emulator_unchanged(
    variant: str,
    serve: Callable[[Handler], FakeNsmServer],
    socket_path: Path,
    shim_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    flags, symbols = _C_VARIANTS[variant]
    program = compile_c(_C_CLIENT, tmp_path / "client", *flags)
    nm = shutil.which("nm")
    if nm is not None:
        undefined = subprocess.run(
            [nm, "-D", "--undefined-only", str(program)], capture_output=True, text=True, check=True
        ).stdout
        imported = {line.split()[-1].split("@")[0] for line in undefined.splitlines()}
        assert symbols <= imported, f"{variant} build does not call {symbols - imported}"
    server = serve(echo)
    result = subprocess.run(
        [str(program), str(os.O_RDONLY | os.O_CLOEXEC), str(tmp_path)],
        env=shim_env(socket_path),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("open", "openat-cwd", "openat-dir", "plain", "child", "after-fork"):
        assert f"{name} re:{name}" in lines
    for name in ("open", "openat-cwd", "openat-dir"):
        assert f"{name} cloexec 1" in lines
    assert "plain cloexec 0" in lines
    assert lines[-1] == "done 0"
    assert server.accepted == 5  # four opens, and the child's own connection after fork
    assert server.wait_until(lambda s: s.ended == 5)
