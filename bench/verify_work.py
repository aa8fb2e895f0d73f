"""The verifier's work above the OpenSSL floor, counted in instructions (valgrind callgrind).

    .venv/bin/python bench/verify_work.py            # needs valgrind (apt-get install valgrind)

Wall-clock ratios on a shared machine move with the load (see `bench/verify.py`); the number of
instructions executed does not. This runs the same passes as `bench/verify.py` (cold, warm and
their floors, over the 63 real enclave documents, each once) under callgrind, once per pass and
once with no pass at all, in parallel, and prints the instructions per document of each pass
minus the no-pass run: what the pass itself executed. Under valgrind OpenSSL runs without the
CPU features valgrind does not emulate (SHA extensions, for example), so absolute counts are not
those of a native run; compare counts of the same build.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PASSES = ("none", "cold", "floor5", "keyed5", "warm", "floor1", "parse")

# The child: one pass over the documents, after the same setup for every pass.
_CHILD = """
import logging, sys
sys.path.insert(0, sys.argv[2])
logging.getLogger("attestation").setLevel(logging.ERROR)
from cryptography import x509
from attestation import AttestationDocument, Verifier
from bench._common import own_policy, real_enclave_documents
from bench.verify import floor_items
docs = real_enclave_documents()
inputs = [(d.data, own_policy(d).build(), d.timestamp) for d in docs]
floors = [floor_items(d.data) for d in docs]
parsed = [AttestationDocument.parse(d.data) for d in docs]
ders = [[p.certificate, *p.cabundle[:0:-1]] for p in parsed]  # the keys that sign, as floors
warm = Verifier.aws()
for data, policy, at in inputs:
    warm.verify(data, policy=policy, at=at)
name = sys.argv[1]
for i, (data, policy, at) in enumerate(inputs):
    if name == "cold":
        Verifier.aws().verify(data, policy=policy, at=at)
    elif name == "warm":
        warm.verify(data, policy=policy, at=at)
    elif name == "parse":
        AttestationDocument.parse(data)
    elif name == "floor1":
        key, sig, message, algorithm = floors[i][0]
        key.verify(sig, message, algorithm)
    elif name == "floor5":
        for key, sig, message, algorithm in floors[i]:
            key.verify(sig, message, algorithm)
    elif name == "keyed5":
        for j, (key, sig, message, algorithm) in enumerate(floors[i]):
            if j < 4:
                key = x509.load_der_x509_certificate(ders[i][j]).public_key()
            key.verify(sig, message, algorithm)
"""


def count(name: str, workdir: Path, repo: Path) -> int:
    """Instructions callgrind collected for the child running pass `name`."""
    script = workdir / "child.py"
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={workdir / name}.out",
            sys.executable,
            str(script),
            name,
            str(repo),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind for {name}:\n{result.stderr}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="valgrind runs at once")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the tree to measure (e.g. a git worktree)"
    )
    args = parser.parse_args(argv)
    from bench._common import real_enclave_documents

    documents = len(real_enclave_documents())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "child.py").write_text(_CHILD)
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = pool.map(lambda name: count(name, workdir, args.repo), PASSES)
            counts = dict(zip(PASSES, runs, strict=True))
    per = {name: (counts[name] - counts["none"]) / documents for name in PASSES[1:]}
    print(f"{args.repo}: instructions per document ({documents} real documents, one pass each)")
    for name, value in per.items():
        print(f"  {name:7s} {value:>12,.0f}")
    for ours, floor in (("cold", "floor5"), ("keyed5", "floor5"), ("warm", "floor1")):
        above = per[ours] - per[floor]
        print(f"  {ours} - {floor}: {above:>10,.0f} ({per[ours] / per[floor]:.4f}x)")


if __name__ == "__main__":
    main()
