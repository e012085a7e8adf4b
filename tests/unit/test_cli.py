from __future__ import annotations

import pytest

from varmor import __version__
from varmor.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "dev" in capsys.readouterr().out


def test_a_leader_alone_takes_the_webhook_flags_it_registers() -> None:
    """`split` may run the leader in its own container: it must accept the webhook and
    certificate flags (it registers that webhook) without the webhook role loaded."""
    from varmor.cli import build_parser

    argv = ["run", "--roles=leader", "--webhook-config-name=x", "--cert-secret=y"]
    args = build_parser(argv).parse_args(argv)
    assert args.webhook_config_name == "x"
    assert args.cert_secret == "y"


def test_every_role_takes_the_compile_budget_flags() -> None:
    """One budget for every apparmor_parser run: the agent alone and the leader alone
    accept the flags and hand them to what compiles."""
    from varmor.cli import build_parser
    from varmor.nodeexec.role import config_from_args
    from varmor.settings import budget_from_args

    for role in ("agent", "leader", "webhook"):
        argv = ["run", f"--roles={role}", "--compile-cpu-seconds=3", "--compile-memory-mib=128"]
        args = build_parser(argv).parse_args(argv)
        assert (budget_from_args(args).cpu_seconds, budget_from_args(args).memory_mib) == (3.0, 128)
    argv = ["run", "--roles=agent", "--compile-cpu-seconds=3"]
    assert config_from_args(build_parser(argv).parse_args(argv)).budget.cpu_seconds == 3.0


@pytest.mark.parametrize("argv", [["rules", "list"], ["rules", "list", "--json"], ["crds"]])
def test_a_closed_pipe_ends_quietly_with_sigpipes_status(argv: list[str]) -> None:
    """`varmor rules list | head -1`: no traceback, and the exit status of a Unix tool
    killed by SIGPIPE (or 0 when everything fitted in the pipe before it closed)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "varmor.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after one line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) in (0, 141), err
    assert "Traceback" not in err
    assert "BrokenPipe" not in err
