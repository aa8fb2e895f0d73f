"""The replay exchange: one HTTPS listener answering for every exchange host, by Host header.

- `DemoCertificates.create(dir)`: a throwaway CA and one server certificate whose SANs name the
  four exchange hosts. The enclave trusts that CA (and only it) in replay mode.
- `ReplayExchange(certs)`: serves each request from `data/responses.json`, by `(host, path)`:
  the 200 ticker answer by default, with its timestamps (Binance `closeTime`/`openTime`,
  Coinbase `time`, OKX `ts`, every `Date` header) moved so that the source time is "now" minus
  what it was at recording. `Rule`s override that per host/path: another status or body, an
  older timestamp, a dropped connection, for a number of requests or for good.
"""

from __future__ import annotations

import datetime as _dt
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from enclave_net.tls_server import QuietHandler, ThreadingTLSServer
from oracle_example.exchanges import ADAPTERS
from oracle_example.replay._pki import (
    issue_server_certificate,
    self_signed_ca,
    write_certificate,
    write_key,
)

__all__ = [
    "DATA_DIR",
    "DemoCertificates",
    "ReplayExchange",
    "Rule",
    "Served",
    "recorded_responses",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
#: Every adapter's host: a new exchange in exchanges.py is served (and certified) here too.
EXCHANGE_HOSTS = tuple(cls.default_host for cls in ADAPTERS.values())
# The demo certificates only need to outlive one demo or test run.
_CERT_LIFETIME = _dt.timedelta(days=2)


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


@dataclass(frozen=True)
class Recorded:
    file: str
    source: str
    feed: str
    host: str
    path: str
    status: int
    headers: Mapping[str, str]

    @property
    def body(self) -> bytes:
        return (DATA_DIR / self.file).read_bytes()


def recorded_responses() -> tuple[_dt.datetime, list[Recorded]]:
    """(the manifest's recording instant, every recorded response)."""
    manifest = json.loads((DATA_DIR / "responses.json").read_text())
    at = _dt.datetime.fromisoformat(manifest["recordedAt"].replace("Z", "+00:00"))
    return at, [Recorded(**row) for row in manifest["responses"]]


@dataclass(frozen=True, kw_only=True)
class DemoCertificates:
    """A demo CA (`ca_pem`) and a server certificate for the exchange hosts, in `directory`."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    @classmethod
    def create(cls, directory: Path, hosts: Iterable[str] = EXCHANGE_HOSTS) -> DemoCertificates:
        now = _utcnow()
        window = {"not_before": now - _dt.timedelta(hours=1), "not_after": now + _CERT_LIFETIME}
        ca_key, ca = self_signed_ca("nitro-oracle DEMO CA (replay only)", **window)
        key, leaf = issue_server_certificate(ca_key, ca, list(hosts), **window)
        out = cls(
            ca_pem=directory / "demo-ca.pem",
            cert_pem=directory / "replay-server.pem",
            key_pem=directory / "replay-server.key",
        )
        write_certificate(out.ca_pem, ca)
        write_certificate(out.cert_pem, leaf)
        write_key(out.key_pem, key)
        return out


@dataclass(kw_only=True)
class Rule:
    """Override the answer for `host` (and `path`, or any path when None).

    `file`: a recorded body (its manifest status and headers apply unless given here);
    `status`/`headers`: override them; `age`: make the source timestamps this much older than
    now; `drop`: close the connection without answering; `count`: how many requests the rule
    answers (None: all of them).
    """

    host: str
    path: str | None = None
    file: str | None = None
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    age: _dt.timedelta = _dt.timedelta(0)
    drop: bool = False
    count: int | None = None
    delay: float = 0.0
    """Seconds to wait before answering (a slow exchange)."""


@dataclass(kw_only=True)
class Served:
    """One request the replay answered: `status` None when the connection was dropped."""

    host: str
    path: str
    at: float
    """time.monotonic() on arrival."""
    status: int | None


class ReplayExchange:
    """`ReplayExchange(certs)`; `.port`; `.add_rule(Rule(...))`; `.close()`."""

    def __init__(
        self,
        certs: DemoCertificates,
        *,
        bind: str = "127.0.0.1",
        clock: Callable[[], _dt.datetime] = _utcnow,
    ) -> None:
        self.recorded_at, self._recorded = recorded_responses()
        self._clock = clock
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self.requests: list[Served] = []
        """Every request, in arrival order."""
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(certs.cert_pem, certs.key_pem)
        self._server = _Server((bind, 0), _Handler, self.context)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="replay-exchange", daemon=True
        )
        self._thread.start()

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.host for r in self._recorded))

    def add_rule(self, rule: Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def count(self, host: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.host == host)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- answering ----------------------------------------------------------------------------

    def _rule_for(self, host: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.host != host or (rule.path is not None and rule.path != path):
                    continue
                if rule.count is not None:
                    if rule.count <= 0:
                        continue
                    rule.count -= 1
                return rule
        return None

    def answer(self, host: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        """(status, headers, body) for one request, or None to drop the connection."""
        rule = self._rule_for(host, path)
        served = Served(host=host, path=path, at=time.monotonic(), status=None)
        with self._lock:
            self.requests.append(served)
        if rule is not None and rule.delay > 0:
            time.sleep(rule.delay)
        if rule is not None and rule.drop:
            return None
        recorded: Recorded | None = None
        if rule is not None and rule.file is not None:
            recorded = next((r for r in self._recorded if r.file == rule.file), None)
            if recorded is None:
                raise LookupError(f"no recorded file {rule.file}")
        else:
            recorded = next(
                (
                    r
                    for r in self._recorded
                    if r.host == host and r.path == path and r.status == 200 and "ticker" in r.file
                ),
                None,
            )
        age = rule.age if rule is not None else _dt.timedelta(0)
        shift = self._clock() - self.recorded_at - age
        if recorded is None:
            body = json.dumps({"message": f"replay: nothing recorded for {host}{path}"}).encode()
            status, headers = 404, {"content-type": "application/json"}
        else:
            status, headers = recorded.status, dict(recorded.headers)
            body = _restamp(recorded.source, recorded.body, shift)
        if rule is not None:
            status = rule.status if rule.status is not None else status
            headers.update({k.lower(): v for k, v in rule.headers.items()})
        served.status = status
        if "date" in headers:
            when = _parse_http_date(headers["date"])
            if when is not None:
                headers["date"] = format_datetime(when + shift, usegmt=True)
        return status, headers, body


def _parse_http_date(text: str) -> _dt.datetime | None:
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else None


def _shift_ms(value: object, shift: _dt.timedelta) -> object:
    delta = int(shift / _dt.timedelta(milliseconds=1))
    if isinstance(value, int) and not isinstance(value, bool):
        return value + delta
    if isinstance(value, str) and value.isdigit():
        return str(int(value) + delta)
    return value


def _restamp(source: str, body: bytes, shift: _dt.timedelta) -> bytes:
    """The body with its source timestamps moved by `shift` (other bytes kept as they were)."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return body
    if source == "binance" and isinstance(doc, dict) and "closeTime" in doc:
        for key in ("openTime", "closeTime"):
            doc[key] = _shift_ms(doc.get(key), shift)
    elif source == "okx" and isinstance(doc, dict) and isinstance(doc.get("data"), list):
        for item in doc["data"]:
            if isinstance(item, dict) and "ts" in item:
                item["ts"] = _shift_ms(item["ts"], shift)
    elif source == "coinbase" and isinstance(doc, dict) and isinstance(doc.get("time"), str):
        when = _dt.datetime.fromisoformat(doc["time"].replace("Z", "+00:00")) + shift
        doc["time"] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    else:
        return body  # Kraken: its source time is the Date header, moved by the caller
    return json.dumps(doc, separators=(",", ":")).encode()


class _Handler(QuietHandler):
    server: _Server

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        answer = self.server.owner.answer(host, self.path)
        if answer is None:
            self.close_connection = True
            return
        status, headers, body = answer
        self._replay_date = headers.get("date")
        self.send_response(status)
        for name, value in headers.items():
            if name not in ("content-length", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    _replay_date: str | None = None

    def send_response(self, code: int, message: str | None = None) -> None:
        # BaseHTTPRequestHandler.send_response adds the real Date; the replay sends the recorded
        # one, moved to now, which is the Kraken adapter's source time.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Server", "nitro-oracle-replay")
        if self._replay_date:
            self.send_header("Date", self._replay_date)


class _Server(ThreadingTLSServer):
    owner: ReplayExchange
