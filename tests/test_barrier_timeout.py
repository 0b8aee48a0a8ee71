"""How long a process waits for the others at a checkpoint step.

`processes.timeout_s` is 30 minutes unless ``JSCOPE_BARRIER_TIMEOUT_S`` says
otherwise; a value that is not a number of seconds > 0 is a `CheckpointError`
naming the variable. The waits of a multi-process save and restore
(``blocking_key_value_get``) read it every time.
"""

import pickle

import pytest

from jscope import errors
from jscope._src.checkpoint import processes


def test_thirty_minutes_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv(processes.TIMEOUT_ENV, raising=False)
    assert processes.timeout_s() == 1800.0
    assert processes._timeout_ms(processes.timeout_s()) == 1_800_000
    monkeypatch.setenv(processes.TIMEOUT_ENV, "")
    assert processes.timeout_s() == 1800.0


@pytest.mark.parametrize(
    "text, seconds", [("600", 600.0), (" 2.5 ", 2.5), ("1e-4", 1e-4)]
)
def test_the_environment_variable_sets_it_read_at_every_wait(
    monkeypatch, text, seconds
):
    monkeypatch.setenv(processes.TIMEOUT_ENV, text)
    assert processes.timeout_s() == seconds
    assert processes._timeout_ms(processes.timeout_s()) == max(1, round(seconds * 1000))
    monkeypatch.setenv(processes.TIMEOUT_ENV, "7")
    assert processes.timeout_s() == 7.0


@pytest.mark.parametrize("text", ["soon", "0", "-5", "nan", "inf", "10s"])
def test_a_value_that_is_not_seconds_is_a_checkpoint_error(monkeypatch, text):
    monkeypatch.setenv(processes.TIMEOUT_ENV, text)
    with pytest.raises(errors.CheckpointError) as e:
        processes.timeout_s()
    assert isinstance(e.value, ValueError)
    message = str(e.value)
    assert f"JSCOPE_BARRIER_TIMEOUT_S={text!r}" in message and "> 0" in message
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is type(e.value) and str(again) == message
