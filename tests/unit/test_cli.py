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
