"""The emulator on a Unix socket (`nsm emulator serve`), framed as in `nsm._framing`."""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import stat
import threading
from pathlib import Path

from nsm import _framing
from nsm.emulator import Emulator
from nsm.errors import TransportError

__all__ = ["EmulatorServer", "SocketInUseError", "write_root_pem"]

log = logging.getLogger("nsm.emulator")


class _Handler(socketserver.BaseRequestHandler):
    server: EmulatorServer

    def handle(self) -> None:
        while True:
            try:
                request = _framing.read_frame(self.request)
                if request is None:
                    return
                _framing.write_frame(self.request, self.server.emulator.handle(request))
            except TransportError as exc:
                log.info("emulator client dropped: %s", exc)
                return


class EmulatorServer(socketserver.ThreadingUnixStreamServer):
    """One thread per connection; the emulator itself serializes requests like the device."""

    daemon_threads = True

    def __init__(self, path: str | os.PathLike[str], emulator: Emulator) -> None:
        self.emulator = emulator
        self.path = Path(path)
        _remove_stale_socket(self.path)
        super().__init__(str(self.path), _Handler)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="nsm-emulator", daemon=True)
        thread.start()
        return thread

    def server_close(self) -> None:
        super().server_close()
        self.path.unlink(missing_ok=True)


class SocketInUseError(TransportError):
    """Another server is listening on the socket path: taking it over would cut its clients off."""


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a server that is gone; refuse anything else at `path`."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUseError(f"{path} exists and is not a socket; refusing to replace it")
    # A live server accepts a connection; a stale file (its server died without unlinking it)
    # refuses with ECONNREFUSED and may be replaced.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()
        return
    except OSError as exc:
        raise SocketInUseError(
            f"cannot tell whether {path} is in use ({exc}); not replacing it"
        ) from exc
    finally:
        probe.close()
    raise SocketInUseError(
        f"another server is listening on unix:{path}; stop it or choose another --socket "
        "(a stale socket file with no listener is replaced)"
    )


def write_root_pem(path: str | os.PathLike[str], pem: bytes) -> None:
    """Write the root atomically, so a reader never sees half a certificate."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(pem)
    tmp.replace(target)
