"""The command line's last line of defence: unexpected errors and Ctrl-C never print a traceback."""

from __future__ import annotations

from typer.testing import CliRunner

from delfi.cli.guard import GuardedGroup, EXIT_INTERNAL, EXIT_INTERRUPTED, crash_report_dir


def _boom(*args, **kwargs):
    raise RuntimeError("Object visitation failed (a deliberate test error)")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _invoke_raising(monkeypatch, error_fn):
    """Run a command that calls ``error_fn`` under a group built like delfi's own."""
    import typer

    app = typer.Typer(cls=GuardedGroup, pretty_exceptions_enable=False)
    app.command("raise")(lambda: error_fn())
    app.command("other")(lambda: None)  # two commands: a group, as delfi's app is
    return CliRunner().invoke(app, ["raise"])


def test_delfi_app_is_guarded():
    import typer

    from delfi.cli.app import app

    assert isinstance(typer.main.get_command(app), GuardedGroup)


def test_unexpected_error_prints_one_line_and_writes_crash_report(monkeypatch):
    monkeypatch.delenv("DELFI_TRACEBACK", raising=False)
    result = _invoke_raising(monkeypatch, _boom)
    assert result.exit_code == EXIT_INTERNAL
    assert "Traceback" not in result.output
    assert "unexpected error (RuntimeError)" in result.output
    assert "Object visitation failed" in result.output
    reports = sorted(crash_report_dir().glob("crash-*.txt"))
    assert reports, "no crash report written"
    text = reports[-1].read_text()
    assert "Traceback" in text and "deliberate test error" in text
    assert str(reports[-1]) in result.output.replace("\n", "")


def test_ctrl_c_exits_130_without_traceback(monkeypatch):
    result = _invoke_raising(monkeypatch, _interrupt)
    assert result.exit_code == EXIT_INTERRUPTED
    assert "Traceback" not in result.output
    assert "interrupted" in result.output


def test_debug_variable_lets_the_exception_through(monkeypatch):
    monkeypatch.setenv("DELFI_TRACEBACK", "1")
    result = _invoke_raising(monkeypatch, _boom)
    assert isinstance(result.exception, RuntimeError)
