"""Clock-checked time budgets and load-aware thread counts (MedSynthLib.budget)."""

import subprocess
import sys
import time

import pytest

from MedSynthLib.budget import TimeBudget, cpu_threads, idle_cores
from MedSynthLib.errors import InputError


def test_budget_runs_on_the_clock_and_reports_cuts():
    budget = TimeBudget(0.2)
    assert not budget.expired() and 0 < budget.remaining() <= 0.2
    time.sleep(0.25)
    assert budget.expired() and budget.remaining() == 0.0
    budget.cut("training stopped at step 10 of 100")
    report = budget.report()
    assert report["budget_s"] == 0.2 and report["spent_s"] >= 0.25
    assert report["cut"] == ["training stopped at step 10 of 100"]
    assert TimeBudget(None).remaining() == float("inf") and not TimeBudget(None).expired()


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "60", True])
def test_budget_refuses_what_is_not_a_positive_duration(bad):
    with pytest.raises(InputError, match="time budget"):
        TimeBudget(bad)


def test_threads_follow_the_idle_cores():
    assert cpu_threads(idle=0.2) == 1  # another job holds the cores: one thread, never zero
    assert cpu_threads(requested=3) == 3
    with pytest.raises(InputError, match="threads"):
        cpu_threads(requested=0)


def test_a_busy_neighbour_takes_cores_away():
    """A second process spinning on a core shows up as (about) one core less idle."""
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<3: pass"])
    try:
        time.sleep(0.5)
        busy = idle_cores(window=1.0)
    finally:
        spinner.kill()
        spinner.wait()
    import os

    assert busy <= len(os.sched_getaffinity(0)) - 0.5
