"""`nitro-oracle demo` end to end, as `make demo` runs it, and what it leaves behind: nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.enclave_net._support import REPO, TEST_NETNS_PREFIXES, namespaces_unavailable

pytestmark = pytest.mark.root


def _netns_list() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def _processes_mentioning(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


# A process inherits an ignored SIGINT, and Python then leaves it ignored: under `make test &`
# (a background job of a non-interactive shell ignores SIGINT) the demo would never see Ctrl-C.
# Start it as a terminal does, with SIGINT at its default, whoever started this test run.
_AS_FROM_A_TERMINAL = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)

_DEMO = ("-m", "oracle_example._cli", "demo")


def _demo(out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _AS_FROM_A_TERMINAL, *_DEMO, "--out", str(out), "--replay"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _workdir(output: str) -> str:
    match = re.search(r"unix:(/tmp/oe-demo-[^/]+)/nsm\.sock", output)
    assert match, output
    return match.group(1)


@pytest.fixture(scope="module", autouse=True)
def _needs_root() -> None:
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(reason)


def test_demo_verifies_both_feeds_and_leaves_nothing(tmp_path: Path) -> None:
    namespaces_before = _netns_list()
    proc = _demo(tmp_path / "out")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "REPLAY FORCED" in output
    assert "network namespace with no interface up" in output
    assert output.count("  VERIFIED  ") == 3, output  # USDT/USD, BTC/USD, ETH/USD
    assert "RESULT: 3 feeds verified end to end (REPLAY); 2 rounds relayed on-chain" in output
    # the chain leg: registered after verifying the attestation, two rounds, read back
    assert "registered signer " in output
    assert output.count("relayed round ") == 2
    assert "latestRoundData() = roundId " in output and " BTC/USD), updatedAt " in output
    assert "anvil" in output.split("stopped: ")[1]
    # --sealed-key: one signer address before and after the enclave restart, the second
    # boot unsealed through the KMS double, and the reports signed by that same key.
    before = re.findall(r"signer address   (0x[0-9a-fA-F]{40}) before the restart", output)
    after = re.findall(r"signer address   (0x[0-9a-fA-F]{40}) after the restart \(unsealed", output)
    assert len(before) == len(after) == 1 and before == after, output
    assert "KMS double       served Encrypt, Decrypt\n" in output
    assert output.count(f"recovers {before[0]} = the key attested") == 3, output
    assert f"registered signer {before[0]} in OracleRegistry" in output
    # The attestation behind the reports, for a person: module id and the chain with validity.
    assert "attestation      " in output and ", module i-" in output
    assert output.count(" UTC\n") >= 6  # the document's time, then five certificates
    assert "emulator.nitro-enclaves" in output
    out = tmp_path / "out"
    for name in (
        "BTC-USD.report.json",
        "ETH-USD.report.json",
        "USDT-USD.report.json",
        "attestation.cbor",
        "emulator-root.pem",
        "summary.json",
    ):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "BTC-USD.report.json").read_text())
    assert report["typedData"]["primaryType"] == "PriceReport"
    assert (out / "emulator-root.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    workdir = _workdir(output)
    assert not Path(workdir).exists()  # sockets, certificates, config: all removed
    assert _processes_mentioning(workdir) == []
    # `unshare --net` namespaces die with their process; none is named, none may remain.
    # Meanwhile other test runs on this machine add and delete their own, by their prefixes.
    appeared = _netns_list() - namespaces_before
    assert {n for n in appeared if not n.startswith(TEST_NETNS_PREFIXES)} == set()


def test_sigint_stops_everything(tmp_path: Path) -> None:
    proc = _demo(tmp_path / "out")
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("  enclave app"):
            break
    workdir = _workdir("".join(lines))
    proc.send_signal(signal.SIGINT)  # while it waits for the enclave's first round
    rest, _ = proc.communicate(timeout=30)
    output = "".join(lines) + rest
    assert proc.returncode == 130, output
    assert "interrupted: stopping everything" in output
    assert "stopped: enclave" in output
    assert not Path(workdir).exists()
    deadline = time.monotonic() + 5
    while _processes_mentioning(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(workdir) == []
