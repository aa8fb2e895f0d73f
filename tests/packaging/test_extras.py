"""Without an extra's libraries, every console script names the extra and exits 2.

The missing libraries are simulated in a child process by a meta-path finder that refuses to
import them, exactly as Python reports a module that is not installed (ModuleNotFoundError).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

_BLOCKER = """
import sys
from importlib.abc import MetaPathFinder

BLOCKED = set(sys.argv[1].split(","))

class NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""

NET = "httpcore2,anyio,h11,certifi"
ORACLE = "coincurve,sha3"


def _run(blocked: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER + code, blocked],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("entry", "prog", "blocked", "extra"),
    [
        ("oracle_example.__main__", "nitro-oracle", ORACLE, "oracle"),
        ("oracle_example.__main__", "nitro-oracle", NET, "oracle"),
        ("enclave_net.__main__", "enclave-net", NET, "net"),
    ],
)
@pytest.mark.parametrize("argv", [["--help"], ["doctor", "--help"], ["get", "BTC/USD"]])
def test_console_script_names_the_missing_extra(
    entry: str, prog: str, blocked: str, extra: str, argv: list[str]
) -> None:
    if prog == "enclave-net" and argv[0] == "get":
        argv = ["fetch", "https://example.com/"]
    # What the console script runs: `main()` of the module pyproject.toml names.
    result = _run(blocked, f"from {entry} import main; sys.exit(main({argv!r}))")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"install the {extra} extra: pip install 'nsm-attestation[{extra}]'" in result.stderr
    assert result.stderr.startswith(f"{prog}: ")


def test_python_dash_m_is_the_same_entry_point() -> None:
    result = _run(
        ORACLE,
        "import runpy; sys.argv = ['x', '--help']; "
        "runpy.run_module('oracle_example', run_name='__main__')",
    )
    assert result.returncode == 2, result.stderr
    assert "nsm-attestation[oracle]" in result.stderr


def test_import_oracle_example_works_and_its_names_say_which_extra() -> None:
    code = (
        "import oracle_example\n"
        "print(oracle_example.__version__)\n"
        "from enclave_net._extras import MissingExtraError\n"
        "try:\n"
        "    oracle_example.verify_report\n"
        "except MissingExtraError as exc:\n"
        "    print(exc.extra, exc.missing, isinstance(exc, ImportError))\n"
    )
    result = _run(ORACLE, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[1] == "oracle coincurve True"


def test_the_net_extra_missing_for_enclave_net_names() -> None:
    result = _run(NET, "from enclave_net import EgressClient")
    assert result.returncode == 1
    assert re.search(
        r"MissingExtraError: \w+ is not installed; install the net extra", result.stderr
    )


def test_a_missing_module_of_our_own_is_not_blamed_on_an_extra() -> None:
    result = _run(
        "oracle_example",
        "from enclave_net._extras import run_entry_point; "
        "run_entry_point('x', 'oracle_example._cli', 'oracle', [])",
    )
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'oracle_example" in result.stderr
    assert "install the" not in result.stderr


@pytest.mark.parametrize("entry", ["nsm", "attestation", "enclave_net", "oracle_example"])
def test_version_on_every_command(entry: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", entry, "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    from importlib.metadata import version

    assert result.stdout.split() == [
        {"nsm": "nsm", "attestation": "nitro-attest", "enclave_net": "enclave-net"}.get(
            entry, "nitro-oracle"
        ),
        version("nsm-attestation"),
    ]


def test_every_package_has_the_distribution_version() -> None:
    from importlib.metadata import version

    import attestation
    import enclave_net
    import nsm
    import oracle_example

    expected = version("nsm-attestation")
    assert [m.__version__ for m in (nsm, attestation, enclave_net, oracle_example)] == [
        expected
    ] * 4
