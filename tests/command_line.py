"""Helpers for the tests of the package's commands: refused arguments, and work that must not start."""

import pytest


def refused(main, capsys, argv) -> str:
    """The error message of a command ``main(argv)`` that argparse refuses (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, argv)])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def forbid(monkeypatch, module, name: str, what: str) -> None:
    """Make ``module.name`` fail the test if called: ``what`` must not happen before a bad input is refused."""

    def fail(*args, **kwargs):
        pytest.fail(f"{what} before the bad input was refused")

    monkeypatch.setattr(module, name, fail)
