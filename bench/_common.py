"""Shared by `bench/verify.py` and `bench/differential.py`: the inputs, our verifier, the peers.

Inputs are the real AWS documents in `../shared/vectors/real/` (read in place, never copied) and,
when present, the synthetic conformance corpus in `vectors/corpus/`. Both become `Case`s: bytes,
a verification time, trust roots, a policy in the corpus's JSON form, and the expected outcome.

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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = REPO.parent / "shared" / "vectors" / "real"
CORPUS_DIR = REPO / "vectors" / "corpus"
OUT_DIR = REPO / "bench" / "out"
PEER_VENV = OUT_DIR / ".venv-peers"
PEER_REQUIREMENTS = REPO / "bench" / "requirements-peers.txt"
PEER_WORKER = REPO / "bench" / "_peers.py"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
AWS_ROOT_PEM = REAL_DIR / "aws_nitro_root_g1.pem"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Default freshness bound for the real documents' own policy (verified at their own timestamp).
REAL_MAX_AGE_MS = 300_000


@dataclass(frozen=True)
class Case:
    """One input with its expected outcome, in the corpus's vocabulary."""

    id: str
    family: str
    description: str
    data: bytes
    at: datetime
    roots_pem: Path
    policy: dict[str, Any]
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
            "policy": self.policy,
        }


def _ms_to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def real_manifest() -> list[dict[str, Any]]:
    path = REAL_DIR / "MANIFEST.json"
    if not path.exists():
        raise SystemExit(f"real documents not found at {REAL_DIR}")
    entries: list[dict[str, Any]] = json.loads(path.read_text())
    return entries


def _own_policy(
    data: bytes, *, debug: bool, indices: tuple[int, ...] = (0, 1, 2)
) -> dict[str, Any]:
    from attestation import AttestationDocument

    pcrs = AttestationDocument.parse(data).pcrs
    return {
        "pcrs": {str(i): pcrs[i].hex() for i in indices if i in pcrs},
        "nonce": None,
        "max_age_ms": REAL_MAX_AGE_MS,
        "allow_debug": debug,
        "user_data": None,
        "public_key": None,
    }


@dataclass(frozen=True)
class RealDocument:
    name: str
    data: bytes
    at: datetime
    debug: bool
    window: tuple[datetime, datetime]


def real_enclave_documents() -> list[RealDocument]:
    """The 63 genuine enclave documents, each with its own timestamp."""
    out = []
    for entry in real_manifest():
        if entry.get("doc_kind") != "nitro-enclave" or entry["file"].startswith("negative/"):
            continue
        start, end = entry["chain_valid_window_utc"]
        out.append(
            RealDocument(
                name=entry["file"],
                data=(REAL_DIR / entry["file"]).read_bytes(),
                at=_ms_to_datetime(int(entry["known_timestamp_ms"])),
                debug=str(entry.get("enclave_mode", "")).startswith("debug"),
                window=(datetime.fromisoformat(start), datetime.fromisoformat(end)),
            )
        )
    return out


# Expected codes of the four published negatives, by the kind in their file name.
_NEGATIVE_CODES = {
    "badsig": "signature.invalid",
    "pcr-bitflip": "signature.invalid",
    # Three bytes are missing inside the payload, so a byte-exact parser reads on into the
    # signature and fails there: any cbor.* / envelope.* code is right (as the tests say).
    "malformed-as-published": "cbor.*",
}


def real_cases() -> list[Case]:
    """Real documents as cases: as published, past their chain window, wrong PCR, debug."""
    cases: list[Case] = []
    for doc in real_enclave_documents():
        kind = "debug" if doc.debug else "production"
        policy = _own_policy(doc.data, debug=doc.debug)
        cases.append(
            Case(
                id=f"real/valid/{doc.name}",
                family="real: genuine, at own timestamp",
                description=f"genuine {kind} document verified at its own timestamp",
                data=doc.data,
                at=doc.at,
                roots_pem=AWS_ROOT_PEM,
                policy=policy,
                expected_valid=True,
                expected_code=None,
                source="real",
                tags=(kind, "indefinite" if _payload_is_indefinite(doc.data) else "definite"),
            )
        )
        cases.append(
            Case(
                id=f"real/expired/{doc.name}",
                family="real: 1 s past the chain window",
                description="genuine document verified one second after its chain expired",
                data=doc.data,
                at=doc.window[1] + timedelta(seconds=1),
                roots_pem=AWS_ROOT_PEM,
                policy={**policy, "max_age_ms": None},
                expected_valid=False,
                expected_code="chain.expired",
                source="real",
            )
        )
        wrong = dict(policy["pcrs"])
        wrong["2"] = bytes(b ^ 1 for b in bytes.fromhex(wrong["2"])).hex()
        cases.append(
            Case(
                id=f"real/wrong-pcr2/{doc.name}",
                family="real: expected PCR2 differs",
                description="genuine document, the policy expects a different PCR2",
                data=doc.data,
                at=doc.at,
                roots_pem=AWS_ROOT_PEM,
                policy={**policy, "pcrs": wrong},
                expected_valid=False,
                expected_code="policy.pcr-mismatch",
                source="real",
            )
        )
        if doc.debug:
            cases.append(
                Case(
                    id=f"real/debug-refused/{doc.name}",
                    family="real: debug document, debug not allowed",
                    description="genuine debug-mode document (PCR0 all zero), allow_debug false",
                    data=doc.data,
                    at=doc.at,
                    roots_pem=AWS_ROOT_PEM,
                    policy={**policy, "allow_debug": False},
                    expected_valid=False,
                    expected_code="policy.debug",
                    source="real",
                )
            )
    for entry in real_manifest():
        name = entry["file"]
        if entry.get("doc_kind") == "nitrotpm":
            data = (REAL_DIR / name).read_bytes()
            cases.append(
                Case(
                    id=f"real/nitrotpm/{name}",
                    family="real: NitroTPM document",
                    description="genuine NitroTPM (EC2 instance) document, not an enclave one",
                    data=data,
                    at=_ms_to_datetime(int(entry["known_timestamp_ms"])),
                    roots_pem=AWS_ROOT_PEM,
                    policy={
                        "pcrs": {"0": "00" * 48},
                        "nonce": None,
                        "max_age_ms": REAL_MAX_AGE_MS,
                        "allow_debug": False,
                        "user_data": None,
                        "public_key": None,
                    },
                    expected_valid=False,
                    expected_code="document.nitrotpm",
                    source="real",
                )
            )
        elif name.startswith("negative/"):
            kind = name.split("_")[2]
            cases.append(
                Case(
                    id=f"real/negative/{name.removeprefix('negative/')}",
                    family="real: published negative",
                    description=str(entry["expected"]),
                    data=(REAL_DIR / name).read_bytes(),
                    at=_ms_to_datetime(int(entry["known_timestamp_ms"])),
                    roots_pem=AWS_ROOT_PEM,
                    policy={
                        "pcrs": {"0": "00" * 48},
                        "nonce": None,
                        "max_age_ms": None,
                        "allow_debug": True,
                        "user_data": None,
                        "public_key": None,
                    },
                    expected_valid=False,
                    expected_code=_NEGATIVE_CODES[kind],
                    source="real",
                )
            )
    return cases


def _payload_is_indefinite(data: bytes) -> bool:
    from attestation import AttestationDocument

    return AttestationDocument.parse(data).payload[0] == 0xBF


def corpus_cases() -> list[Case]:
    """The synthetic corpus, or nothing if it has not been generated."""
    manifest = CORPUS_DIR / "manifest.json"
    if not manifest.exists():
        return []
    cases = []
    for case in json.loads(manifest.read_text())["cases"]:
        (root,) = case["roots"]
        expected = case["expected"]
        cases.append(
            Case(
                id=case["id"],
                family=case["family"],
                description=case["description"],
                data=(CORPUS_DIR / case["document"]).read_bytes(),
                at=datetime.fromisoformat(case["at"]),
                roots_pem=CORPUS_DIR / root,
                policy=case["policy"],
                expected_valid=bool(expected["valid"]),
                expected_code=expected.get("error_code"),
                source="corpus",
            )
        )
    return cases


def build_policy(policy: dict[str, Any]) -> Any:
    """The corpus's JSON policy as an `attestation.Policy`."""
    from attestation import Policy

    max_age = policy.get("max_age_ms")
    return Policy(
        pcrs={int(i): v for i, v in policy["pcrs"].items()},
        nonce=policy.get("nonce"),
        max_age=None if max_age is None else timedelta(milliseconds=max_age),
        allow_debug=bool(policy.get("allow_debug")),
        user_data=policy.get("user_data"),
        public_key=policy.get("public_key"),
    )


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
        verifier.verify(case.data, policy=build_policy(case.policy), at=case.at)
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
