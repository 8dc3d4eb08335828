"""Load shedding (gateway/admission.py): PIE's share of refused calls follows the event loop's
lag and how much of the time the loop wants a CPU, and a gateway whose loop is starved
(late, or busy in short turns that leave it on time) refuses new calls at once with
RESOURCE_EXHAUSTED, then serves everything again once the loop is free (real gRPC on
127.0.0.1, in-process backend)."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter as Tally

import grpc
import pytest

from kairos.cluster.gateway import admission, calls
from kairos.cluster.gateway.admission import BUSY_HOLD, BUSY_MAX_SHARE, Shedder, ThreadDemand
from kairos.cluster.gateway.auth import Auth
from kairos.cluster.metrics import GatewayMetrics
from kairos.v1 import decision_pb2 as pb
from kairos.v1 import decision_pb2_grpc

from tests.support.inprocess_gateway import InProcessGateway
from tests.support.metrics import Recorder
from tests.support.waiting import until, wait_until

TARGET_S = 0.015
BUSY = 0.8


def shedder(draws=(0.5,), busy_target: float = BUSY) -> Shedder:
    values = iter(draws * 1000)
    return Shedder(TARGET_S, 0.015, busy_target, draw=lambda: next(values))


def test_a_delay_held_over_the_target_raises_the_share_and_its_end_lowers_it():
    s = shedder()
    for _ in range(200):
        s.update(10 * TARGET_S)
    assert s.shed_share > 0.5 and not s.admits()  # 0.5 drawn: refused
    assert s.refused == 1
    for _ in range(400):
        s.update(0.1 * TARGET_S)
    assert s.shed_share < 0.01 and s.admits()


def test_a_short_burst_sheds_nothing():
    s = shedder(draws=(0.0,))  # the draw that a share above 0 would refuse
    s.update(5 * TARGET_S)  # one slow turn of the loop (a collection, a large message)
    for _ in range(3):
        s.update(0.1 * TARGET_S)
    assert s.shed_share < 0.2 and s.admits()


def test_a_loop_wanting_a_cpu_past_the_target_sheds_with_no_delay_and_stops_once_idle():
    s = shedder()
    for _ in range(200):
        s.update(0.1 * TARGET_S, busy=0.97)  # every turn short, yet never off a CPU
    assert s.busy > BUSY and s.shed_share > 0.5 and not s.admits()
    for _ in range(400):
        s.update(0.1 * TARGET_S, busy=0.3)
    assert s.shed_share < 0.01 and s.admits()


def test_between_the_hold_line_and_the_target_the_share_holds():
    s = shedder()
    for _ in range(100):
        s.update(0.1 * TARGET_S, busy=0.97)
    raised = s.shed_share
    for _ in range(100):
        s.update(0.1 * TARGET_S, busy=(1 + BUSY_HOLD) / 2 * BUSY)
    assert raised > 0.3 and s.shed_share > 0.5 * raised  # PIE's own step only (a decay: 13 %)


def test_a_loop_busy_with_refusals_alone_still_serves_a_share():
    s = shedder(draws=(0.95,))
    for _ in range(2000):
        s.update(0.1 * TARGET_S, busy=1.0)  # refusing does not lower what the loop wants
    assert s.shed_share == pytest.approx(BUSY_MAX_SHARE) and s.admits()
    for _ in range(200):
        s.update(10 * TARGET_S, busy=1.0)  # a late loop is PIE's, as before: no cap
    assert s.shed_share == 1.0


def test_a_busy_target_of_one_turns_the_busy_signal_off():
    s = shedder(busy_target=1.0)
    for _ in range(200):
        s.update(0.1 * TARGET_S, busy=1.02)  # a measure may pass 1 by its rounding
    assert s.shed_share == 0.0 and s.admits()
    for _ in range(200):
        s.update(10 * TARGET_S, busy=1.02)
    raised = s.shed_share
    for _ in range(400):
        s.update(0.1 * TARGET_S, busy=1.02)  # no hold band either: the share decays
    assert raised > 0.5 and s.shed_share < 0.01


def test_a_cancelled_shedder_admits_everything():
    async def raise_then_cancel():
        s = Shedder(TARGET_S, 0.005, BUSY)
        task = asyncio.get_running_loop().create_task(s.run())
        await asyncio.sleep(0.02)
        s.shed_share = 0.7
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return s.shed_share
    assert asyncio.run(raise_then_cancel()) == 0.0


def test_the_demand_of_a_spinning_thread_is_near_one_and_of_a_sleeping_one_near_zero():
    with ThreadDemand() as demand:
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            pass
        spinning = demand.share()
        time.sleep(0.2)
        sleeping = demand.share()
    assert spinning > 0.6 and sleeping < 0.2


def test_a_schedstat_that_stops_reading_falls_back_to_the_thread_s_cpu_time(tmp_path):
    garbage = tmp_path / "schedstat"
    garbage.write_text("not numbers\n")
    with ThreadDemand() as demand:
        if demand._fd is not None:
            unreadable = os.open(garbage, os.O_RDONLY)
            os.dup2(unreadable, demand._fd)  # the same fd, unreadable now
            os.close(unreadable)
            assert demand.share() == 0.0  # the interval the clocks changed in: not measured
        assert demand._fd is None
        # the thread's CPU time over the wall time, whatever else the machine runs (a spin
        # gets a fraction of a core on a loaded one, which schedstat's waits would count)
        start, ran = time.monotonic(), time.thread_time()
        while time.monotonic() < start + 0.2:
            pass
        share = demand.share()
        expected = (time.thread_time() - ran) / (time.monotonic() - start)
        assert share > 0.05 and abs(share - expected) < 0.1


def test_the_metrics_count_each_refusal_once_and_show_the_share_and_the_loop_busy():
    s = shedder(draws=(0.0,))
    metrics = GatewayMetrics("g1")
    metrics.shed, metrics.shed_share, metrics.loop_busy = Recorder(), Recorder(), Recorder()
    for _ in range(200):
        s.update(0.1 * TARGET_S, busy=0.97)
    for refusals in (2, 0, 3):
        for _ in range(refusals):
            assert not s.admits()
        metrics.flush(Tally(), s, Tally())
    assert metrics.shed.calls == [(2, {"gateway": "g1"}), (3, {"gateway": "g1"})]
    assert metrics.shed_share.calls[-1] == (s.shed_share, {"gateway": "g1"})
    assert metrics.loop_busy.calls[-1] == (s.busy, {"gateway": "g1"})


def test_the_metrics_count_each_refused_health_watch_once_by_answer():
    metrics = GatewayMetrics("g1")
    metrics.watches_refused = Recorder()
    refused = Tally()
    for answer, more in (("unimplemented", 2), ("unimplemented", 0),
                         ("resource_exhausted", 1)):
        refused[answer] += more
        metrics.flush(Tally(), shedder(), refused)
    assert metrics.watches_refused.calls == [
        (2, {"gateway": "g1", "answer": "unimplemented"}),
        (1, {"gateway": "g1", "answer": "resource_exhausted"})]


def test_the_share_stays_a_probability():
    s = shedder()
    for delay in [100.0] * 50 + [0.0] * 5000:
        s.update(delay)
        assert 0.0 <= s.shed_share <= 1.0


@pytest.fixture
def gateway():
    g = InProcessGateway(Auth.load(None), shed=True)
    yield g
    g.close()


def _late(seconds: float) -> None:
    time.sleep(seconds)


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _starve(g: InProcessGateway, until: threading.Event, hold, seconds: float,
            gap_s: float) -> None:
    """Keep the gateway's loop busy: a callback that holds it `seconds`, again and again,
    `gap_s` apart."""
    def hog():
        hold(seconds)
        if not until.is_set():
            g.loop.call_later(gap_s, hog)
    g.loop.call_soon_threadsafe(hog)


# A loop held 40 ms at a time, asleep (late: the lag); or on a CPU 6 ms of about every 7,
# late by less than half the target (busy: what the calls grpc.aio has not accepted yet meet
# on a full node). The busy loop's gaps let gRPC's threads, which need the GIL too, go on.
@pytest.mark.parametrize("hold, seconds, gap_s", [(_late, 0.04, 0.0), (_busy, 0.006, 0.0003)],
                         ids=["late", "busy"])
def test_a_starved_gateway_refuses_new_calls_at_once_and_recovers(gateway, hold, seconds,
                                                                  gap_s):
    stop = threading.Event()
    codes: list = []
    with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)

        def decide_all(n: int, wave: int = 10) -> list[grpc.StatusCode]:
            """n calls, `wave` at a time: grpc.aio hands a starved loop one call per turn (40
            calls one after another took 14 s), and too many at once wait past a deadline"""
            codes = []
            for _ in range(0, n, wave):
                calls = [stub.Decide.future(pb.DecideRequest(customer_id="c", channel="web"),
                                            timeout=5) for _ in range(wave)]
                codes += [call.code() for call in calls]
                assert all("overloaded" in call.details() for call in calls
                           if call.code() != grpc.StatusCode.OK)
            return codes

        _starve(gateway, stop, hold, seconds, gap_s)
        try:
            # half or more refused (and rising meanwhile): 20 calls all admitted would be a
            # chance of 1e-6
            wait_until(lambda: gateway.gateway.shedder.shed_share > 0.5, 20,
                       "the share shed to rise while the loop is starved")
            codes = decide_all(20)
        finally:
            stop.set()
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        wait_until(lambda: gateway.gateway.shedder.shed_share < 0.01, 30,
                   "the share to decay once the loop is free")
        assert decide_all(20) == [grpc.StatusCode.OK] * 20
    assert gateway.gateway.shedder.refused == codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_a_shedder_that_fails_is_logged_and_started_again(monkeypatch, caplog):
    """A failed shedder admits everything; the gateway says so and runs it again."""
    monkeypatch.setattr(calls, "SHEDDER_RESTART_S", 0.01)
    runs = []

    async def failing():
        runs.append(time.monotonic())
        raise OSError("schedstat went away")

    async def run_a_while():
        gateway = calls.Gateway("g-test", client=None, backend=None)
        monkeypatch.setattr(gateway.shedder, "run", failing)
        gateway.start()
        await until(lambda: len(runs) >= 2, 5.0, "the shedder run again")
        gateway._shedding.cancel()
        await asyncio.gather(gateway._shedding, return_exceptions=True)

    with caplog.at_level("ERROR", logger="kairos.gateway"):
        asyncio.run(run_a_while())
    failed = [r for r in caplog.records if "load shedder failed" in r.getMessage()]
    assert failed and "schedstat went away" in failed[0].exc_text


def test_an_idle_shedder_updates_less_often_and_a_busy_late_or_shedding_one_every_update(
        monkeypatch):
    """Each update wakes the loop: idle, it waits idle_update_s; otherwise update_s."""
    slept: list[float] = []

    async def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 2:
            raise asyncio.CancelledError
    monkeypatch.setattr(admission.asyncio, "sleep", sleep)

    def interval(**state) -> float:
        s = Shedder(TARGET_S, 0.015, BUSY, idle_update_s=0.1)
        monkeypatch.setattr(s, "update", lambda delay_s, busy=0.0: None)  # state stays
        for name, value in state.items():
            setattr(s, name, value)
        slept.clear()
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(s.run())
        return slept[0]
    assert interval() == 0.1
    assert interval(busy=BUSY * admission.BUSY_IDLE * 0.9) == 0.1
    assert interval(busy=BUSY * admission.BUSY_IDLE) == 0.015  # busy enough to watch closely
    assert interval(delay_s=TARGET_S / 2) == 0.015  # late
    assert interval(shed_share=0.01) == 0.015  # shedding
    off = Shedder(TARGET_S, 0.015, 1.0, idle_update_s=0.1)
    off.busy = 0.99  # the busy signal off: only the lag and the share count
    assert off.idle()
