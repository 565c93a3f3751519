"""User mistakes (HarkenError, OSError) are one line and exit 2; anything else is a bug and
keeps its traceback (harken/common/clitools.py)."""

import pytest

from harken.common.clitools import command_parser, run_command
from harken.common.errors import DataError, HarkenError, UsageError


def _parser(exc: BaseException):
    p, sub = command_parser("harken-test", None)

    def fail(args):
        raise exc
    sub.add_parser("go").set_defaults(func=fail)
    return p


@pytest.mark.parametrize("exc", [UsageError("--set width=3: expected one of [0.5]"),
                                 DataError("a.wav: too short"),
                                 FileNotFoundError(2, "No such file", "x.wav")])
def test_a_user_mistake_is_one_line_and_exit_2(exc, capsys):
    assert run_command(_parser(exc), ["go"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harken-test: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_a_bug_is_not_dressed_up_as_a_user_mistake():
    with pytest.raises(ValueError, match="internal"):
        run_command(_parser(ValueError("internal invariant broken")), ["go"])
    with pytest.raises(KeyError):
        run_command(_parser(KeyError("x")), ["go"])


def test_every_user_error_class_is_a_harken_error():
    from harken.agent.sinks.mqtt.broker import BrokerError
    from harken.agent.model.bundle import BundleError
    from harken.agent.config import ConfigError
    from harken.agent.features import FeatureSpecError
    from harken.agent.model.rules.base import RuleError
    from harken.agent.sources import SourceError
    from harken.agent.sources.wavio import WavError
    for cls in (BrokerError, BundleError, ConfigError, FeatureSpecError, RuleError, SourceError,
                WavError, UsageError, DataError):
        assert issubclass(cls, HarkenError), cls
    assert run_command(_parser(SourceError("no microphone")), ["go"]) == 2


def _logging_parser():
    import logging
    p, sub = command_parser("harken-test", None)

    def talk(args):
        log = logging.getLogger("harken.agent.somewhere")
        log.debug("a detail")
        log.info("progress")
        log.warning("a warning")
        return 0
    sub.add_parser("go").set_defaults(func=talk)
    return p


@pytest.mark.parametrize("level, shown, hidden", [
    ("info", ["harken-test: progress", "harken-test: WARNING: a warning"], ["a detail"]),
    ("debug", ["harken-test: a detail", "harken-test: progress"], []),
    ("warning", ["harken-test: WARNING: a warning"], ["progress", "a detail"]),
    ("error", [], ["progress", "a warning"]),
])
def test_log_level_sets_what_every_module_logger_shows(level, shown, hidden, capsys):
    assert run_command(_logging_parser(), ["--log-level", level, "go"]) == 0
    err = capsys.readouterr().err
    for line in shown:
        assert line in err.splitlines()
    for text in hidden:
        assert text not in err


def test_the_log_level_comes_from_the_environment_when_not_given(monkeypatch, capsys):
    monkeypatch.setenv("HARKEN_LOG_LEVEL", "warning")
    assert run_command(_logging_parser(), ["go"]) == 0
    err = capsys.readouterr().err
    assert "progress" not in err and "harken-test: WARNING: a warning" in err.splitlines()


def test_an_unknown_log_level_is_a_usage_error(capsys):
    assert run_command(_logging_parser(), ["--log-level", "loud", "go"]) == 2
    assert "invalid choice: 'loud'" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["harken.agent.cli", "harken.training.cli", "harken.export.cli"])
def test_every_command_line_takes_log_level(module):
    """README: --log-level on every command (harken, harken-train, harken-export)."""
    import importlib
    if module != "harken.agent.cli":
        pytest.importorskip("torch", reason="the workstation side is not installed")
    parser = importlib.import_module(module).build_parser()
    action = parser._option_string_actions["--log-level"]
    assert list(action.choices) == ["debug", "info", "warning", "error"]


def test_log_level_works_after_the_sub_command_and_in_any_case(capsys):
    assert run_command(_logging_parser(), ["go", "--log-level", "WARNING"]) == 0
    err = capsys.readouterr().err
    assert "progress" not in err and "harken-test: WARNING: a warning" in err.splitlines()
    assert run_command(_logging_parser(), ["--log-level", "error", "go", "--log-level",
                                           "debug"]) == 0
    assert "harken-test: a detail" in capsys.readouterr().err.splitlines()


def test_a_log_level_in_the_environment_that_is_no_level_is_said_once(monkeypatch, capsys):
    monkeypatch.setenv("HARKEN_LOG_LEVEL", "loud")
    assert run_command(_logging_parser(), ["go"]) == 0
    err = capsys.readouterr().err
    assert err.count("HARKEN_LOG_LEVEL='loud' is not a level") == 1
    assert "harken-test: progress" in err.splitlines()           # info, the default


def test_an_option_is_checked_by_the_same_type_as_its_config_key():
    """clitools.arg: one rule for ``model.threads`` and ``--threads`` (harken/common/settings)."""
    import argparse

    from harken.common.clitools import arg
    from harken.common.settings import Count, Name, Seconds
    threads = arg(Count(1, 64, "threads"))
    assert threads("8") == 8 and threads(" 8 ") == 8
    for text, said in [("0", "'0': expected 1 to 64 threads"), ("2.5", "not a whole number"),
                       ("", "not a whole number"), ("9" * 5000, "expected 1 to 64 threads")]:
        with pytest.raises(argparse.ArgumentTypeError, match=said):
            threads(text)
    seconds = arg(Seconds(0, 10, lo_open=True))
    assert seconds("0.5") == 0.5
    for text in ("nan", "inf", "-inf", "1e400", "0", "-1", "10.001"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected above 0, up to 10 "
                                                             "seconds"):
            seconds(text)
    assert arg(Name)("pump-7") == "pump-7"
    with pytest.raises(argparse.ArgumentTypeError, match="at most 64 allowed"):
        arg(Name)("p" * 65)


def test_a_usage_error_is_exit_2_returned_not_raised(capsys):
    """main(argv) in-process (tests, the fuzz) gets argparse's refusals as a status too."""
    p, sub = command_parser("harken-test", None)
    go = sub.add_parser("go")
    go.add_argument("--config")
    go.set_defaults(func=lambda args: 0)
    assert run_command(p, ["go", "--nope"]) == 2
    assert run_command(p, ["go", "--config=--"]) == 2        # argparse would hand over []
    assert "argument --config: expected one argument" in capsys.readouterr().err
    assert run_command(p, ["go", "--help"]) == 0
