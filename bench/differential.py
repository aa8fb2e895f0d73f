"""Differential conformance: the real documents and the corpus through us and every peer.

    .venv/bin/python bench/differential.py            # run, print a summary, write the doc
    .venv/bin/python bench/differential.py --no-write

Cases (`bench/_common.py`): every real enclave document at its own timestamp (valid), one second
past its chain window (`chain.expired`), with a wrong expected PCR2 (`policy.pcr-mismatch`) and,
for debug ones, without `allow_debug` (`policy.debug`); the NitroTPM documents
(`document.nitrotpm`); the published negatives; and every case of `vectors/corpus/` when it
exists. Our verifier gets a fresh `Verifier` per case and is compared on the exact error code;
peers have no codes and are compared on the verdict (accepted or not). A peer is marked n/a for a
case its public API cannot express (evervault: any root but AWS's, or PCRs behind its TLS
binding; pycose: anything but the COSE envelope and signature). Peers run in their own venv
under libfaketime set to each case's time (see `bench/_peers.py` for the adapters).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    REPO,
    Case,
    code_matches,
    corpus_cases,
    machine,
    real_cases,
    run_ours,
    run_peer_worker,
)

CONFORMANCE_MD = REPO / "docs" / "conformance.md"
PEERS = ("evervault", "epsilon", "pycose")
OURS = "nsm-attestation"
# Families whose expected outcome the COSE step alone decides.
_COSE_FAMILIES = {"valid", "envelope", "signature", "real: genuine, at own timestamp"}
_COSE_REAL_NEGATIVES = ("badsig", "pcr-bitflip", "malformed-as-published")
NOT_INSTALLED = {
    "blindai": "blindai 0.6.3 (latest on PyPI) ships no Nitro verifier: its "
    "`_nitro_attestation.py` exists only on GitHub; the wheel pins torch, openai-whisper "
    "and cryptography < 40",
}


@dataclass(frozen=True)
class Outcome:
    status: str  # "right", "wrong", "n/a"
    accepted: bool | None
    detail: str


def _applies(peer: str, case: Case) -> str | None:
    """Why `peer` cannot be judged on `case`, or None."""
    if peer == "pycose":
        if case.family in _COSE_FAMILIES:
            return None
        if case.family == "real: published negative" and any(
            k in case.id for k in _COSE_REAL_NEGATIVES
        ):
            return None
        return "COSE step only"
    if peer == "evervault" and case.expected_code == "policy.pcr-mismatch":
        return "PCRs are compared only after the TLS-certificate binding, unreachable here"
    return None


def judge_ours(case: Case, accepted: bool, code: str | None) -> Outcome:
    if accepted == case.expected_valid and (accepted or code_matches(case.expected_code, code)):
        return Outcome("right", accepted, "accepted" if accepted else str(code))
    got = "accepted" if accepted else str(code)
    return Outcome("wrong", accepted, got)


def judge_peer(peer: str, case: Case, result: dict[str, Any] | None) -> Outcome:
    if result is None:
        return Outcome("n/a", None, "not run")
    reason = _applies(peer, case)
    if result.get("accepted") is None:
        return Outcome("n/a", None, str(result.get("error")))
    if reason is not None:
        return Outcome("n/a", bool(result["accepted"]), reason)
    accepted = bool(result["accepted"])
    detail = "accepted" if accepted else str(result.get("error"))
    if result.get("note"):
        detail += f" ({result['note']})"
    return Outcome("right" if accepted == case.expected_valid else "wrong", accepted, detail)


_NOTABLE_CORPUS = (
    "valid/tag18",
    "valid/indefinite-map",
    "signature/high-s-twin",
    "chain/foreign-root-in-cabundle0",
    "policy/debug-allowed",
)


def _notable(case: Case) -> bool:
    if case.id in _NOTABLE_CORPUS:
        return True
    return case.id.startswith("real/valid/") and (
        "hf-nitrite" in case.id or "indefinite" in case.tags
    )


def _expected(case: Case) -> str:
    return "valid" if case.expected_valid else f"invalid ({case.expected_code})"


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Differential conformance against the peers.")
    parser.add_argument("--no-peers", action="store_true", help="only our verifier")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {CONFORMANCE_MD}")
    args = parser.parse_args(argv)
    command = "python bench/differential.py" + "".join(
        f" {shlex.quote(a)}" for a in (argv or sys.argv[1:])
    )
    import logging

    logging.getLogger("attestation").setLevel(logging.ERROR)  # allow_debug warns per use

    real = real_cases()
    corpus = corpus_cases()
    cases = real + corpus
    outcomes: dict[str, dict[str, Outcome]] = {OURS: {}}
    for case in cases:
        accepted, code = run_ours(case)
        outcomes[OURS][case.id] = judge_ours(case, accepted, code)

    versions: dict[str, str] = {}
    failed: dict[str, str] = dict(NOT_INSTALLED)
    if not args.no_peers:
        answer = run_peer_worker("verdicts", [c.job() for c in cases], peers=list(PEERS))
        versions = answer["versions"]
        failed.update(answer["failed"])
        for peer in PEERS:
            if peer not in answer["results"]:
                continue
            results = answer["results"][peer]
            outcomes[peer] = {c.id: judge_peer(peer, c, results.get(c.id)) for c in cases}

    text = render(cases, outcomes, versions, failed, command, corpus_present=bool(corpus))
    for verifier, per_case in outcomes.items():
        wrong = sum(o.status == "wrong" for o in per_case.values())
        judged = sum(o.status != "n/a" for o in per_case.values())
        print(f"{verifier:16s} wrong on {wrong} of {judged} judged cases")
    if not args.no_write:
        CONFORMANCE_MD.parent.mkdir(exist_ok=True)
        CONFORMANCE_MD.write_text(text)
        print(f"wrote {CONFORMANCE_MD.relative_to(REPO)}")


def _cell(items: list[Outcome]) -> str:
    judged = [o for o in items if o.status != "n/a"]
    if not judged:
        return "n/a"
    wrong = sum(o.status == "wrong" for o in judged)
    right = len(judged) - wrong
    return f"{right}/{len(judged)}" + (f" **✗{wrong}**" if wrong else " ✔")


def render(
    cases: list[Case],
    outcomes: dict[str, dict[str, Outcome]],
    versions: dict[str, str],
    failed: dict[str, str],
    command: str,
    *,
    corpus_present: bool,
) -> str:
    verifiers = list(outcomes)
    names = {OURS: f"{OURS} (this repo)"} | {p: f"{p} {versions.get(p, '')}".strip() for p in PEERS}
    families: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        group = case.family if case.source == "real" else f"corpus: {case.family}"
        families[group].append(case)
    m = machine()
    lines = [
        "# Conformance: this verifier and its peers on the same documents",
        "",
        "Written by `bench/differential.py` (method in its docstring). Reproduce from the "
        "repository root (peers install themselves into `bench/out/.venv-peers` from "
        "`bench/requirements-peers.txt`; libfaketime comes from the Debian package `faketime`):",
        "",
        "```",
        f".venv/bin/{command}",
        "```",
        "",
        f"Run with {m['python']}, cryptography {m['cryptography']} ({m['openssl']}).",
        "",
        "Cases: the real AWS documents of `vectors/real/` (each genuine enclave "
        "document at its own timestamp, one second past its chain window, with a wrong expected "
        "PCR2 and, if debug, without `allow_debug`; the NitroTPM documents; the published "
        "negatives) and "
        + (
            "every case of the synthetic corpus `vectors/corpus/` (its own root, time and policy)."
            if corpus_present
            else "**not** the synthetic corpus (`vectors/corpus/` was not generated when this ran)."
        ),
        "",
        "Each cell: cases judged right / cases judged; **✗n** = wrong on n. Our verifier must "
        "also give the exact error code; peers, which have no such codes, are judged on the "
        "verdict alone (so a peer that rejects an invalid document for another reason counts as "
        "right). n/a: the peer's public API cannot express the case (see the notes below).",
        "",
        "| case family | cases | " + " | ".join(names[v] for v in verifiers) + " |",
        "|---|---:|" + "---|" * len(verifiers),
    ]
    for family, members in families.items():
        cells = [_cell([outcomes[v][c.id] for c in members]) for v in verifiers]
        lines.append(f"| {family} | {len(members)} | " + " | ".join(cells) + " |")
    totals = [_cell([outcomes[v][c.id] for c in cases]) for v in verifiers]
    lines.append(f"| **all** | {len(cases)} | " + " | ".join(totals) + " |")

    # Notable individual cases: every one some verifier gets wrong, plus a few edge cases.
    notable_ids = [c.id for c in cases if _notable(c)] + [
        c.id
        for c in cases
        if any(outcomes[v][c.id].status == "wrong" for v in verifiers)
        and not c.id.startswith("real/")
        and not _notable(c)
    ]
    lines += [
        "",
        "## Notable individual cases",
        "",
        "Edge cases every verifier should pass (real documents with an empty public_key or an "
        "indefinite-length payload, tag 18, a high-S twin, a foreign root in cabundle[0], "
        "debug allowed), then every corpus case that at least one verifier gets wrong "
        "(✔ right, ✗ wrong, - n/a; A accepted, R rejected):",
        "",
        "| case | expected | " + " | ".join(names[v] for v in verifiers) + " |",
        "|---|---|" + "---|" * len(verifiers),
    ]
    by_id = {c.id: c for c in cases}
    for case_id in notable_ids:
        case = by_id[case_id]
        cells = []
        for v in verifiers:
            o = outcomes[v][case_id]
            mark = {"right": "✔", "wrong": "✗", "n/a": "-"}[o.status]
            verdict = "" if o.accepted is None else ("A" if o.accepted else "R")
            cells.append(f"{mark} {verdict}".strip())
        lines.append(f"| `{case_id}` | {_expected(case)} | " + " | ".join(cells) + " |")
    if not notable_ids:
        lines.append("| (none) | | " + " | ".join("" for _ in verifiers) + " |")

    lines += ["", "## What each verifier got wrong", ""]
    for v in verifiers:
        wrong = [(by_id[cid], o) for cid, o in outcomes[v].items() if o.status == "wrong"]
        lines.append(f"### {names[v]}")
        lines.append("")
        if not wrong:
            lines.append("Nothing: every judged case as expected.")
            lines.append("")
            continue
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for case, o in wrong:
            key = (_expected(case), _short(o.detail))
            groups[key].append(case.id)
        for (expected, got), ids in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            shown = ", ".join(f"`{i}`" for i in ids[:6]) + (
                f" and {len(ids) - 6} more" if len(ids) > 6 else ""
            )
            lines.append(f"- {len(ids)} x expected {expected}, got: {got} — {shown}")
        lines.append("")

    lines += [
        "## Peers: how they were run",
        "",
        "- **evervault-attestation-bindings** (Rust via PyO3): `attest_enclave(cert, [PCRs], "
        "doc)`. It always binds the document to a TLS certificate (`user_data` must equal that "
        "certificate's public key), after checking structure, chain (AWS root compiled in, "
        "webpki TLS-server rules, wall clock) and COSE; PCRs come after the binding. We pass the "
        "AWS root certificate as the TLS certificate and count a document as accepted when the "
        "binding is the only failure (an ambiguous `InvalidPublicKey` is re-run at 2100-01-01: a "
        "structurally valid document then fails on the chain). It cannot take another root, so "
        "it cannot run the synthetic corpus, and its PCR check is unreachable here.",
        "- **epsilon-attestation-verifier**: `verify_attestation(b64, expected_pcr0/1/2, "
        "aws_root_cert_path=<case root>)`, wall clock. It has no parameter for nonce, "
        "user_data, public_key, freshness or debug documents, so it accepts whatever breaks "
        "only those rules; PCRs other than 0-2 cannot be expressed.",
        "- **pycose** (COSE step only): `Sign1Message.decode` (tag 18 added when absent), "
        "key from the payload's certificate, `verify_signature()`, pure-Python ECDSA. Judged "
        "only where the envelope or the signature decides the outcome.",
        "- Wall-clock peers ran under libfaketime (`LD_PRELOAD`, `FAKETIME` set per case to the "
        "case's time in whole seconds, clock stopped, `FAKETIME_NO_CACHE=1`). Our verifier "
        "takes `at` and needs none of this.",
        "",
        "Where AWS contradicts itself (`docs/attestation_process.md` of "
        "aws/aws-nitro-enclaves-nsm-api: its CDDL allows 0..1024 bytes, its §3.2.2.2 rules "
        "1..1024 for public_key and 0..512 for user_data and nonce) the corpus expects this "
        "repository's documented choice (`attestation/document.py`): public_key, user_data and "
        "nonce of 0..1024 bytes. epsilon's rejection of `valid/max-size-fields` follows AWS's "
        "§3.2.2.2 limit of 512 bytes for user_data; evervault's rejection of the genuine 2021 "
        "hf/nitrite document follows §3.2.2.2's public_key length of at least 1.",
        "",
        "CBOR heads, one rule everywhere (`attestation/_cbor.py`): a head may use any of its "
        "length forms, and its argument is read by value. `1b 00 00 00 00 00 00 00 05` is the "
        "integer 5, and `d8 12`, `d9 00 12`, `da 00 00 00 12` and `db 00 00 00 00 00 00 00 12` "
        "are tag 18 exactly as `d2` is. The NSM writes `timestamp` in the 8-byte form, so "
        "refusing non-shortest heads would refuse real documents; refusing them for the tag "
        "alone would be an inconsistency, not a safeguard (the tag is outside the signed bytes "
        "and carries no data). Refused: any tag other than 18 around the envelope, a second "
        "tag, a tag anywhere inside, reserved additional information (28 to 30), and an "
        "indefinite-length text string whose chunk boundary splits a UTF-8 character (RFC 8949 "
        "§3.2.3).",
        "",
        "Not run:",
        "",
    ]
    lines += [f"- **{name}**: {why}" for name, why in failed.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
