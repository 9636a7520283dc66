"""The roll's logic with gevent greenlets, as pyinfra runs one operation on every gateway at once:
at most `width` gateways out of the rotation, the first failure stops the rest, which keep serving."""

from __future__ import annotations

import gevent
import pytest

from tasks.gateway.roll import Roll, RollError

GATEWAYS = ["gw1", "gw2", "gw3", "gw4", "gw5"]


class Bed:
    """Records what the load balancers were told and which gateways were being recreated at once."""

    def __init__(self, fail: dict[str, str] | None = None, refuse_drain_of: str | None = None):
        self.rotations: list[frozenset[str]] = []
        self.busy: set[str] = set()
        self.most_busy = 0
        self.recreated: list[str] = []
        self.fail = fail or {}
        self.refuse_drain_of = refuse_drain_of
        self.pending: dict[str, bool] = {}

    def apply(self, out: frozenset[str]) -> None:
        if self.refuse_drain_of in out:
            raise RollError("lb1: Error: loading new config: ...")
        gevent.sleep(0.001)  # a reload over SSH yields to the other greenlets
        self.rotations.append(out)

    def steps(self, gateway: str):
        def recreate():
            self.busy.add(gateway)
            self.most_busy = max(self.most_busy, len(self.busy))
            gevent.sleep(0.01)
            self.recreated.append(gateway)
            return None

        def verified():
            gevent.sleep(0.005)
            self.busy.discard(gateway)
            return self.fail.get(gateway)

        def pending(on: bool):
            self.pending[gateway] = on

        return recreate, verified, pending

    def roll(self, width: int, serving: dict[str, bool] | None = None) -> tuple[Roll, dict[str, str | None]]:
        """Every gateway's turn at once, as pyinfra's greenlets take them; serving: all unless said."""
        roll = Roll(width=width, apply=self.apply)
        greenlets = {g: gevent.spawn(roll.run, g, *self.steps(g), serving=(serving or {}).get(g, True))
                     for g in GATEWAYS}
        gevent.joinall(list(greenlets.values()))
        return roll, {g: greenlet.get() for g, greenlet in greenlets.items()}


@pytest.mark.parametrize("width", [1, 2, 3])
def test_at_most_width_gateways_are_out_of_the_rotation_and_all_come_back(width):
    bed = Bed()
    roll, results = bed.roll(width)
    assert results == {g: None for g in GATEWAYS}
    assert sorted(bed.recreated) == GATEWAYS
    assert max(len(out) for out in bed.rotations) == width and bed.most_busy == width
    assert bed.rotations[-1] == frozenset() and roll.drained == set()
    assert not any(bed.pending.values())  # every marker cleared


def test_one_at_a_time_each_gateway_is_drained_before_and_readmitted_after_its_recreation():
    bed = Bed()
    roll, _ = bed.roll(1)
    events = [(g, e) for g, e, _ in roll.log]
    assert events == [(g, e) for g in bed.recreated for e in ("drain", "readmitted")]
    assert bed.rotations == [x for g in bed.recreated for x in (frozenset({g}), frozenset())]


def test_a_failed_verification_stops_the_roll_and_the_rest_keep_serving():
    bed = Bed(fail={"gw2": "verification failed: gateway readiness: HTTP 503"})
    roll, results = bed.roll(1)
    assert bed.recreated == ["gw1", "gw2"]  # nothing after the failure was touched
    assert results["gw1"] is None
    assert results["gw2"].startswith("verification failed: gateway readiness: HTTP 503; the roll stopped here")
    for gateway in ("gw3", "gw4", "gw5"):
        assert results[gateway].startswith("not rolled: the roll stopped when gw2 failed")
        assert "keeps serving its running proxy with the previous configuration" in results[gateway]
        assert bed.pending[gateway] is True  # the next deploy rolls it although its files did not change
    # The failed gateway stays out of the rotation; the ones not rolled were never taken out.
    assert bed.rotations[-1] == frozenset({"gw2"}) and roll.held == frozenset({"gw2"})
    assert bed.pending["gw2"] is True and bed.pending["gw1"] is False


def test_with_two_at_a_time_a_failure_lets_the_other_in_flight_finish_and_stops_the_rest():
    bed = Bed(fail={"gw1": "the proxy did not come up: boom"})
    roll, results = bed.roll(2)
    assert results["gw2"] is None  # already rolling beside gw1: finished and re-admitted
    assert all(results[g].startswith("not rolled") for g in ("gw3", "gw4", "gw5"))
    assert bed.rotations[-1] == frozenset({"gw1"})


def test_a_load_balancer_that_refuses_the_drain_stops_the_roll_before_the_gateway_is_touched():
    bed = Bed(refuse_drain_of="gw1")
    roll, results = bed.roll(1)
    assert "could not drain it from the load balancers: lb1: Error" in results["gw1"]
    assert bed.recreated == [] and all(results[g].startswith("not rolled") for g in GATEWAYS[1:])


def test_gateways_whose_proxy_is_not_running_take_no_slot_and_start_side_by_side():
    """A first deploy: no gateway serves yet, so width 1 does not make them wait for each other."""
    bed = Bed()
    _, results = bed.roll(1, serving={g: False for g in GATEWAYS})
    assert results == {g: None for g in GATEWAYS}
    assert bed.most_busy == len(GATEWAYS)
    assert bed.rotations[-1] == frozenset() and not any(bed.pending.values())


def test_a_serving_gateway_still_waits_for_its_slot_beside_ones_not_serving():
    bed = Bed()
    serving = {"gw1": True, "gw2": True, "gw3": False, "gw4": False, "gw5": True}
    _, results = bed.roll(1, serving)
    assert results == {g: None for g in GATEWAYS}
    serving_out = [out & {g for g, s in serving.items() if s} for out in bed.rotations]
    assert max(len(out) for out in serving_out) == 1  # never two serving gateways out at once
    assert bed.most_busy >= 3  # the two not serving went beside the first serving one


def test_a_gateway_not_serving_after_the_roll_stopped_is_not_started_and_says_so():
    bed = Bed(fail={"gw1": "verification failed: gateway readiness: HTTP 503"})
    roll = Roll(width=1, apply=bed.apply)
    assert roll.run("gw1", *bed.steps("gw1")) is not None
    why = roll.run("gw2", *bed.steps("gw2"), serving=False)
    assert "roll stopped when gw1 failed" in why and "not running, was not started" in why
    assert bed.recreated == ["gw1"] and bed.pending["gw2"] is True
