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
