"""The wire contract and the sandbox agree: bus and sandbox each define verdicts (neither may
import the other), so this freezes them equal."""

import bus
import sandbox


def test_bus_and_sandbox_verdicts_are_the_same_set() -> None:
    assert {v.value for v in bus.Verdict} == {v.value for v in sandbox.Verdict}
    assert len(bus.Verdict) == 9  # DESIGN.md's list
