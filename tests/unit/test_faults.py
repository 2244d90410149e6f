"""The fault-injection hook (tasks/faults.py): off by default, seeded, per-task, and the retry condition."""

from __future__ import annotations

import pytest

from tasks import faults
from tasks.faults import InjectedFault, maybe_fail, retry_unless


pytestmark = pytest.mark.usefixtures("no_faults")


def outcomes(name: str, n: int) -> list[bool]:
    out = []
    for _ in range(n):
        try:
            maybe_fail(name)
            out.append(False)
        except InjectedFault:
            out.append(True)
    return out


def test_off_unless_the_rate_is_set(monkeypatch):
    assert outcomes("write-chunks", 200) == [False] * 200
    assert faults.stats() == {"draws": {}, "injected": {}}  # nothing drawn while off
    monkeypatch.setenv(faults.RATE_ENV, "0")
    assert not any(outcomes("write-chunks", 50))


def test_rate_is_about_right_and_counted(monkeypatch):
    monkeypatch.setenv(faults.RATE_ENV, "0.3")
    failed = sum(outcomes("write-chunks", 2000))
    assert 0.26 < failed / 2000 < 0.34
    assert faults.stats() == {"draws": {"write-chunks": 2000}, "injected": {"write-chunks": failed}}
    monkeypatch.setenv(faults.RATE_ENV, "1")
    assert all(outcomes("plan-changes", 20))


def test_same_seed_same_faults_other_seed_other_faults(monkeypatch):
    monkeypatch.setenv(faults.RATE_ENV, "0.3")
    monkeypatch.setenv(faults.SEED_ENV, "7")
    first = outcomes("embed-chunks", 100)
    faults.reset()
    assert outcomes("embed-chunks", 100) == first
    faults.reset()
    monkeypatch.setenv(faults.SEED_ENV, "8")
    assert outcomes("embed-chunks", 100) != first


def test_a_tasks_draws_do_not_depend_on_other_tasks(monkeypatch):
    monkeypatch.setenv(faults.RATE_ENV, "0.5")
    alone = outcomes("write-ledger", 50)
    faults.reset()
    interleaved = []
    for _ in range(50):
        outcomes("discover-sources", 3)
        interleaved += outcomes("write-ledger", 1)
    assert interleaved == alone


def test_only_the_named_tasks_when_restricted(monkeypatch):
    monkeypatch.setenv(faults.RATE_ENV, "1")
    monkeypatch.setenv(faults.TASKS_ENV, "write-ledger, embed-chunks")
    assert not any(outcomes("write-chunks", 10))
    assert all(outcomes("write-ledger", 3)) and all(outcomes("embed-chunks", 3))
    assert faults.stats()["injected"] == {"write-ledger": 3, "embed-chunks": 3}


def test_the_fault_says_what_it_is_and_how_to_stop_it(monkeypatch):
    monkeypatch.setenv(faults.RATE_ENV, "1")
    with pytest.raises(InjectedFault, match=r"'write-chunks'.*RAGTUNE_FAULTS=1.*unset RAGTUNE_FAULTS"):
        maybe_fail("write-chunks")


@pytest.mark.parametrize("value", ["1.5", "-0.1", "thirty", "30%"])
def test_a_bad_rate_is_refused_with_the_variable_named(monkeypatch, value):
    monkeypatch.setenv(faults.RATE_ENV, value)
    with pytest.raises(ValueError, match="RAGTUNE_FAULTS=.*number from 0 to 1"):
        maybe_fail("write-chunks")


def test_draws_are_stable_numbers_in_the_unit_interval():
    values = [faults.draw("0", "write-chunks", n) for n in range(1000)]
    assert all(0 <= v < 1 for v in values)
    assert values == [faults.draw("0", "write-chunks", n) for n in range(1000)]
    assert faults.draw("0", "write-chunks", 0) != faults.draw("0", "write-ledger", 0)


class Permanent(Exception):
    pass


class State:
    """What Prefect hands a retry condition: a Failed state whose data is the exception."""

    def __init__(self, data):
        self.data = data


def test_retry_condition_retries_everything_but_the_permanent_errors():
    retry = retry_unless(Permanent, KeyError)
    assert retry(None, None, State(InjectedFault("x"))) is True
    assert retry(None, None, State(OSError("disk busy"))) is True
    assert retry(None, None, State(Permanent("bad contract"))) is False
    assert retry(None, None, State(KeyError("k"))) is False
    assert retry(None, None, State(None)) is True  # no exception to judge: retry as Prefect would


def test_retry_condition_is_a_plain_function():
    import inspect

    # Prefect 3.8 calls retry_condition_fn only when inspect.isfunction() holds (else it never retries).
    assert inspect.isfunction(retry_unless(Permanent))
