"""`get` against a running stack: what verifies, and each broken link failing with its reason."""

from __future__ import annotations

import copy
import datetime as _dt
import json
from collections.abc import Iterator
from typing import Any

import coincurve
import pytest

from oracle_example import _cli
from oracle_example.client import get_report
from oracle_example.demo import OracleStack
from oracle_example.errors import ClientError, ReportVerificationError
from oracle_example.eth import to_checksum_address
from oracle_example.report import SignedReport, sign_message
from tests.oracle_example.oracle_stack import oracle_stack
from tests.output_contract import check, check_error


@pytest.fixture(scope="module")
def stack() -> Iterator[OracleStack]:
    with oracle_stack() as running:
        yield running


def _verify(stack: OracleStack, report: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `get_report` but serve `report` instead of the enclave's (a forging gateway)."""
    import oracle_example.client as client

    real = client.http_get

    def forged(base_url: str, path: str, *, timeout: float) -> Any:
        if path.startswith("/v1/price/"):
            return report
        return real(base_url, path, timeout=timeout)

    monkeypatch.setattr(client, "http_get", forged)
    stack.get("BTC/USD")


def _report(stack: OracleStack) -> dict[str, Any]:
    result = stack.get("BTC/USD")
    assert result.verified is not None
    return copy.deepcopy(dict(result.report_json))


def test_a_tampered_report_fails_at_the_signature(
    stack: OracleStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _report(stack)
    report["typedData"]["message"]["price"] += 1
    with pytest.raises(ReportVerificationError) as err:
        _verify(stack, report, monkeypatch)
    assert (err.value.step, err.value.code) == ("signature", "verify.signer")


def test_a_report_signed_by_another_key_fails(
    stack: OracleStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _report(stack)
    parsed = SignedReport.from_json(report)
    other = coincurve.PrivateKey()
    report["signature"] = "0x" + sign_message(parsed.message, parsed.domain, other).hex()
    report["signer"] = to_checksum_address(parsed.recover())  # keep the claimed signer
    with pytest.raises(ReportVerificationError) as err:
        _verify(stack, report, monkeypatch)
    assert (err.value.step, err.value.code) == ("signature", "verify.signer")


def test_a_document_with_another_pcr0_fails(stack: OracleStack) -> None:
    pcrs = dict(stack.pinned_pcrs)
    pcrs[0] = bytes(47) + b"\x01"
    with pytest.raises(ReportVerificationError) as err:
        stack.get("BTC/USD", pcrs=pcrs)
    assert (err.value.step, err.value.code) == ("document", "policy.pcr-mismatch")


def test_a_stale_document_fails(stack: OracleStack) -> None:
    later = _dt.datetime.now(_dt.UTC) + _dt.timedelta(minutes=2)
    with pytest.raises(ReportVerificationError) as err:
        stack.get("BTC/USD", at=later)
    assert (err.value.step, err.value.code) == ("document", "policy.stale")


def test_another_config_hash_fails(stack: OracleStack) -> None:
    with pytest.raises(ReportVerificationError) as err:
        stack.get("BTC/USD", config_hash=bytes(32))
    assert (err.value.step, err.value.code) == ("config", "verify.config_hash")


def test_a_debug_document_fails() -> None:
    with oracle_stack(emulator_debug=True) as debug_stack:
        assert debug_stack.health()["debug"] is True
        with pytest.raises(ReportVerificationError) as err:
            debug_stack.get("BTC/USD")
        assert (err.value.step, err.value.code) == ("document", "policy.debug")


def test_pinning_no_pcr_is_refused(stack: OracleStack) -> None:
    with pytest.raises(ClientError, match="PCR0"):
        get_report(stack.gateway_url, "BTC/USD", verifier=stack.verifier(), pcrs={})


def test_unreachable_gateway_is_a_transport_error(stack: OracleStack) -> None:
    with pytest.raises(ClientError) as err:
        get_report(
            "http://127.0.0.1:9",
            "BTC/USD",
            verifier=stack.verifier(),
            pcrs=stack.pinned_pcrs,
            timeout=1,
        )
    assert err.value.code == "client.transport"


def _cli_get(stack: OracleStack, *extra: str) -> list[str]:
    root = stack.dir / "root.pem"
    root.write_bytes(stack.root_pem)
    pins = [f"--pcr={i}={v.hex()}" for i, v in stack.pinned_pcrs.items()]
    return ["get", "BTC/USD", "--gateway", stack.gateway_url, "--root", str(root), *pins, *extra]


def test_cli_get_human_and_json(stack: OracleStack, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(_cli_get(stack)) == 0
    out = capsys.readouterr().out
    assert "BTC/USD  VERIFIED" in out and "median" in out and "signature" in out
    assert _cli.main(_cli_get(stack, "--json", "--min-sources", "4")) == 0
    result = check("oracle-get", json.loads(capsys.readouterr().out))
    assert result["verified"] is True and result["numSources"] == 4
    assert result["address"] == stack.health()["address"]
    assert _cli.main(_cli_get(stack, "--json", "--min-sources", "5")) == 1
    failure = json.loads(capsys.readouterr().out)
    error = check_error(failure, "verify.too_few_sources")
    assert "--min-sources" in error["hint"]
    assert (failure["feed"], failure["verified"], failure["step"]) == ("BTC/USD", False, "sources")


def test_cli_get_errors_are_json(stack: OracleStack, capsys: pytest.CaptureFixture[str]) -> None:
    # An unreachable gateway: exit 2, the transport error in the error shape.
    argv = ["get", "BTC/USD", "--gateway", "http://127.0.0.1:9", "--pcr", f"0={'00' * 48}"]
    assert _cli.main([*argv, "--timeout", "1", "--json"]) == 2
    check_error(json.loads(capsys.readouterr().out), "client.transport")
    # No PCR pinned, a bad PCR: usage errors, JSON too.
    assert _cli.main(["get", "BTC/USD", "--gateway", stack.gateway_url, "--json"]) == 2
    check_error(json.loads(capsys.readouterr().out), "usage")
    assert _cli.main(["get", "BTC/USD", "--gateway", "x", "--pcr", "0=zz", "--json"]) == 2
    check_error(json.loads(capsys.readouterr().out), "usage")
    # The AWS root refuses the emulator's documents: the hint names --root.
    no_root = [a for a in _cli_get(stack, "--json") if not a.startswith("--root")]
    no_root = [a for a in no_root if not a.endswith("root.pem")]
    assert _cli.main(no_root) == 1
    assert "--root" in check_error(json.loads(capsys.readouterr().out), "chain.untrusted")["hint"]
