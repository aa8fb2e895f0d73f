"""Compile the oracle's contracts with the pinned solcjs, caching artifacts by input hash.

The compiler is `solc` from npm (solcjs, the Emscripten build), pinned in `package-lock.json`
and installed by `npm ci` into `node_modules/` at the project root (`make test` and `make demo`
do it). We drive it through Solidity's Standard JSON interface (`solcjs --standard-json`): the
input names every source and setting, so its SHA-256 identifies the output, and the artifacts are
cached under `build/contracts/<sha256>.json`. Compiling takes seconds; a cache hit, microseconds.

`NITRO_ORACLE_NODE_MODULES` overrides where `node_modules/` is looked for (default: the project
root this package sits in, then the current directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from oracle_example.errors import OracleExampleError

__all__ = [
    "CONTRACTS_DIR",
    "EVM_VERSION",
    "OPTIMIZER_RUNS",
    "SOLC_VERSION",
    "Artifact",
    "CompileError",
    "ToolMissing",
    "compile_contracts",
    "node_tool",
]

#: The compiler version `pragma solidity` pins in every contract and package.json locks.
SOLC_VERSION = "0.8.37"
#: Cancun: the newest EVM most production chains run (PUSH0, MCOPY, transient storage).
EVM_VERSION = "cancun"
#: The report path runs far more often than deployment: optimise for calls.
OPTIMIZER_RUNS = 10_000
CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_COMPILE_TIMEOUT_S = 300.0


class ToolMissing(OracleExampleError):
    """solcjs or anvil is not installed (run `npm ci` at the project root, or `make test`)."""

    code = "chain.tool_missing"


class CompileError(OracleExampleError):
    """solc reported errors, or its output is not what Standard JSON promises."""

    code = "chain.compile"


@dataclass(frozen=True)
class Artifact:
    """One compiled contract: its ABI and creation bytecode."""

    name: str
    abi: tuple[dict[str, object], ...]
    bytecode: bytes


def node_tool(name: str) -> Path:
    """`node_modules/.bin/<name>` from the pinned npm install, or `ToolMissing`."""
    roots = []
    override = os.environ.get("NITRO_ORACLE_NODE_MODULES")
    if override:
        roots.append(Path(override))
    roots += [_PROJECT_ROOT / "node_modules", Path.cwd() / "node_modules"]
    for root in roots:
        tool = root / ".bin" / name
        if tool.is_file() and os.access(tool, os.X_OK):
            return tool
    raise ToolMissing(
        f"{name} not found under {', '.join(str(r) for r in roots)}: run `npm ci --ignore-scripts` "
        "at the project root (make test does), with Debian's nodejs and npm installed"
    )


def _standard_input(contracts_dir: Path) -> dict[str, object]:
    sources = {
        path.name: {"content": path.read_text(encoding="utf-8")}
        for path in sorted(contracts_dir.glob("*.sol"))
    }
    if not sources:
        raise CompileError(f"no .sol files in {contracts_dir}")
    return {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "evmVersion": EVM_VERSION,
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }


def compile_contracts(
    *, contracts_dir: Path = CONTRACTS_DIR, build_dir: Path | None = None
) -> dict[str, Artifact]:
    """Every contract under `contracts_dir`, by name; cached in `build_dir/<sha256>.json`."""
    request = json.dumps(_standard_input(contracts_dir), sort_keys=True).encode("utf-8")
    key = hashlib.sha256(request + SOLC_VERSION.encode()).hexdigest()
    cache_dir = build_dir if build_dir is not None else _PROJECT_ROOT / "build" / "contracts"
    cache = cache_dir / f"{key}.json"
    if cache.is_file():
        output = json.loads(cache.read_text(encoding="utf-8"))
    else:
        output = _run_solc(request)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(output), encoding="utf-8")
        tmp.replace(cache)  # atomic: a concurrent reader never sees half a file
    return _artifacts(output)


def _run_solc(request: bytes) -> dict[str, object]:
    solcjs = node_tool("solcjs")
    try:
        version = subprocess.run(
            [str(solcjs), "--version"], capture_output=True, check=True, timeout=60, text=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolMissing(f"{solcjs} does not run: {exc}") from exc
    if not version.startswith(SOLC_VERSION + "+"):
        raise CompileError(f"solcjs is {version}, the contracts pin {SOLC_VERSION}: run npm ci")
    try:
        done = subprocess.run(
            [str(solcjs), "--standard-json"],
            input=request,
            capture_output=True,
            check=False,
            timeout=_COMPILE_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompileError(f"solcjs failed to run: {exc}") from exc
    if done.returncode != 0:
        raise CompileError(f"solcjs exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    # solcjs prints a notice line (">>> Cannot retry compilation with SMT ...") before the JSON.
    text = done.stdout.decode("utf-8", "replace")
    start = text.find("\n{") + 1 if not text.startswith("{") else 0
    try:
        output = json.loads(text[start:])
    except ValueError as exc:
        raise CompileError(f"solcjs printed no JSON: {done.stdout[:500]!r}") from exc
    if not isinstance(output, dict):
        raise CompileError("solcjs output is not a JSON object")
    errors = [
        e.get("formattedMessage", e.get("message"))
        for e in output.get("errors", [])
        if isinstance(e, dict) and e.get("severity") == "error"
    ]
    if errors:
        raise CompileError("solc errors:\n" + "\n".join(str(e) for e in errors))
    return output


def _artifacts(output: dict[str, object]) -> dict[str, Artifact]:
    out: dict[str, Artifact] = {}
    contracts = output.get("contracts")
    if not isinstance(contracts, dict):
        raise CompileError("solc output has no contracts")
    for unit in contracts.values():
        for name, data in unit.items():
            try:
                abi = tuple(data["abi"])
                code = bytes.fromhex(data["evm"]["bytecode"]["object"])
            except (KeyError, TypeError, ValueError) as exc:
                raise CompileError(f"{name}: malformed artifact: {exc}") from exc
            out[name] = Artifact(name=name, abi=abi, bytecode=code)
    return out
