"""Shared by `bench/verify.py` and `bench/differential.py`: the inputs, our verifier, the peers.

Inputs are the real AWS documents in `vectors/real/` and, when present, the synthetic conformance
corpus in `vectors/corpus/`, both read through `vectors.corpus`. Both become `Case`s: bytes, a
verification time, trust roots, a policy (`PolicySpec`), and the expected outcome.

Peers run in their own virtual environment (`bench/out/.venv-peers`, created from
`bench/requirements-peers.txt` on first use; `bench/out/` is git-ignored) because their pins
conflict with ours (pycose 1.1 needs cbor2 < 6, epsilon pulls requests), and under libfaketime,
because none of them takes a verification time: the worker (`bench/_peers.py`) is started with
`LD_PRELOAD=libfaketime.so.1` and sets `FAKETIME` before each case.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import venv
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from vectors import corpus
from vectors.corpus import PolicySpec, RealDocument

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
PEER_VENV = OUT_DIR / ".venv-peers"
PEER_REQUIREMENTS = REPO / "bench" / "requirements-peers.txt"
PEER_WORKER = REPO / "bench" / "_peers.py"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
AWS_ROOT_PEM = corpus.REAL_DIR / "aws_nitro_root_g1.pem"
# Default freshness bound for the real documents' own policy (verified at their own timestamp).
REAL_MAX_AGE = timedelta(minutes=5)


@dataclass(frozen=True)
class Case:
    """One input with its expected outcome, in the corpus's vocabulary."""

    id: str
    family: str
    description: str
    data: bytes
    at: datetime
    roots_pem: Path
    policy: PolicySpec
    expected_valid: bool
    expected_code: str | None
    source: str  # "real" or "corpus"
    tags: tuple[str, ...] = field(default=())

    def job(self) -> dict[str, Any]:
        """The JSON form the peer worker reads."""
        return {
            "id": self.id,
            "data": self.data.hex(),
            "at": self.at.timestamp(),
            "roots_pem": str(self.roots_pem),
            "policy": self.policy.to_json(),
        }


def own_policy(document: RealDocument, *, indices: tuple[int, ...] = (0, 1, 2)) -> PolicySpec:
    """A real document's policy: its own PCRs (`indices`), 5 min freshness, debug if it is."""
    from attestation import AttestationDocument

    pcrs = AttestationDocument.parse(document.data).pcrs
    return PolicySpec(
        pcrs={i: pcrs[i] for i in indices if i in pcrs},
        max_age=REAL_MAX_AGE,
        allow_debug=document.debug,
    )


def real_enclave_documents() -> list[RealDocument]:
    """The 63 genuine enclave documents (each is verified at its own `timestamp`)."""
    documents = corpus.real_documents(kind="nitro-enclave")
    if not documents:
        raise SystemExit(f"real documents not found at {corpus.REAL_DIR}")
    return documents


# Expected codes of the four published negatives, by the kind in their file name.
_NEGATIVE_CODES = {
    "badsig": "signature.invalid",
    "pcr-bitflip": "signature.invalid",
    # Three bytes are missing inside the payload, so a byte-exact parser reads on into the
    # signature and fails there: any cbor.* / envelope.* code is right (as the tests say).
    "malformed-as-published": "cbor.*",
}
# The NitroTPM documents and the negatives are refused before any policy applies.
_ANY_POLICY = PolicySpec(pcrs={0: bytes(48)}, max_age=REAL_MAX_AGE)


def _real_case(doc: RealDocument, **fields: Any) -> Case:
    return Case(data=doc.data, roots_pem=AWS_ROOT_PEM, source="real", **fields)


def real_cases() -> list[Case]:
    """Real documents as cases: as published, past their chain window, wrong PCR, debug."""
    cases: list[Case] = []
    for doc in real_enclave_documents():
        kind = "debug" if doc.debug else "production"
        policy = own_policy(doc)
        cases.append(
            _real_case(
                doc,
                id=f"real/valid/{doc.name}",
                family="real: genuine, at own timestamp",
                description=f"genuine {kind} document verified at its own timestamp",
                at=doc.timestamp,
                policy=policy,
                expected_valid=True,
                expected_code=None,
                tags=(kind, "indefinite" if _payload_is_indefinite(doc.data) else "definite"),
            )
        )
        cases.append(
            _real_case(
                doc,
                id=f"real/expired/{doc.name}",
                family="real: 1 s past the chain window",
                description="genuine document verified one second after its chain expired",
                at=doc.window[1] + timedelta(seconds=1),
                policy=replace(policy, max_age=None),
                expected_valid=False,
                expected_code="chain.expired",
            )
        )
        wrong = dict(policy.pcr_sets[0])  # own_policy gives one set
        wrong[2] = bytes(b ^ 1 for b in wrong[2])
        cases.append(
            _real_case(
                doc,
                id=f"real/wrong-pcr2/{doc.name}",
                family="real: expected PCR2 differs",
                description="genuine document, the policy expects a different PCR2",
                at=doc.timestamp,
                policy=replace(policy, pcrs=wrong),
                expected_valid=False,
                expected_code="policy.pcr-mismatch",
            )
        )
        if doc.debug:
            cases.append(
                _real_case(
                    doc,
                    id=f"real/debug-refused/{doc.name}",
                    family="real: debug document, debug not allowed",
                    description="genuine debug-mode document (PCR0 all zero), allow_debug false",
                    at=doc.timestamp,
                    policy=replace(policy, allow_debug=False),
                    expected_valid=False,
                    expected_code="policy.debug",
                )
            )
    for doc in corpus.real_documents(kind="nitrotpm"):
        cases.append(
            _real_case(
                doc,
                id=f"real/nitrotpm/{doc.name}",
                family="real: NitroTPM document",
                description="genuine NitroTPM (EC2 instance) document, not an enclave one",
                at=doc.timestamp,
                policy=_ANY_POLICY,
                expected_valid=False,
                expected_code="document.nitrotpm",
            )
        )
    for doc in corpus.real_documents(negative=True):
        cases.append(
            _real_case(
                doc,
                id=f"real/negative/{doc.name.removeprefix('negative/')}",
                family="real: published negative",
                description=str(doc.entry["expected"]),
                at=doc.timestamp,
                policy=replace(_ANY_POLICY, max_age=None, allow_debug=True),
                expected_valid=False,
                expected_code=_NEGATIVE_CODES[doc.name.split("_")[2]],
            )
        )
    return cases


def _payload_is_indefinite(data: bytes) -> bool:
    from attestation import AttestationDocument

    return AttestationDocument.parse(data).payload[0] == 0xBF


def corpus_cases() -> list[Case]:
    """The synthetic corpus, or nothing if it has not been generated."""
    cases = []
    for case in corpus.cases():
        (root,) = case.root_paths
        cases.append(
            Case(
                id=case.id,
                family=case.family,
                description=case.description,
                data=case.document(),
                at=case.at,
                roots_pem=root,
                policy=case.policy_spec,
                expected_valid=case.expected_valid,
                expected_code=case.expected_code,
                source="corpus",
            )
        )
    return cases


def code_matches(expected: str | None, actual: str | None) -> bool:
    """`expected` exactly, or any code of the area when it ends in `.*`."""
    if expected is None or actual is None:
        return expected == actual
    if expected == "cbor.*":
        return actual.startswith(("cbor.", "envelope."))
    return actual == expected


def run_ours(case: Case) -> tuple[bool, str | None]:
    """Our verifier, a fresh instance per case: (accepted, error code)."""
    from attestation import AttestationError, Verifier, load_pem_roots

    verifier = Verifier(roots=load_pem_roots(case.roots_pem.read_bytes()))
    try:
        verifier.verify(case.data, policy=case.policy.build(), at=case.at, kind=case.policy.kind)
    except AttestationError as exc:
        return False, exc.code
    return True, None


# --- peers ------------------------------------------------------------------------------------


def peer_python() -> Path:
    """The peers' interpreter, creating their virtual environment on first use."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < PEER_REQUIREMENTS.stat().st_mtime:
        print(f"creating {PEER_VENV} from {PEER_REQUIREMENTS.name}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(PEER_VENV)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(PEER_REQUIREMENTS)],
            check=True,
        )
        stamp.touch()
    return python


def run_peer_worker(mode: str, jobs: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """Run `bench/_peers.py MODE` in the peers' venv under libfaketime; its JSON answer."""
    if not LIBFAKETIME.exists():
        raise SystemExit(f"{LIBFAKETIME} missing: apt-get install faketime")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    job_file = OUT_DIR / f"peer-jobs-{mode}.json"
    job_file.write_text(json.dumps({"options": options, "jobs": jobs}))
    env = {
        **os.environ,
        "LD_PRELOAD": str(LIBFAKETIME),
        # Re-read FAKETIME on every clock call, so the worker can move the clock per case;
        # leave the monotonic clock alone, so perf_counter timings stay real.
        "FAKETIME_NO_CACHE": "1",
        "DONT_FAKE_MONOTONIC": "1",
        "FAKETIME": "2000-01-01 00:00:00",
        # epsilon caches the root it downloads under ~/.cache; keep it inside bench/out.
        "HOME": str(OUT_DIR / "peer-home"),
    }
    proc = subprocess.run(
        [str(peer_python()), str(PEER_WORKER), mode, str(job_file)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "platform": platform.platform(),
    }


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) the `## heading` section of a Markdown file, leaving the rest."""
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    section = body if body.endswith("\n") else body + "\n"
    if start is None:
        if text and not text.endswith("\n"):
            text += "\n"
        if text and not text.endswith("\n\n"):
            text += "\n"
        if not text:
            text = "# Benchmarks\n\n"
        path.write_text(text + section)
        return
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
        len(lines),
    )
    tail = lines[end:]
    if tail and not section.endswith("\n\n"):
        section += "\n"
    path.write_text("".join([*lines[:start], section, *tail]))
