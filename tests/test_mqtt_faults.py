"""Broker faults: a private Mosquitto is killed (SIGKILL and SIGTERM) repeatedly while events stream,
and once kept down for a long outage. The subscriber must receive every event (deduplicated by
id), in the order a broker-free run (the JSONL sink) produces them.

The long outage lasts ``EDGEFACE_OUTAGE_S`` seconds (default 5). The issue's 60 s version::

    EDGEFACE_OUTAGE_S=60 python -m pytest -q -s -m slow tests/test_mqtt_faults.py
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from _mqtt_helpers import Collector, Gate, PrivateBroker, make_events, unique_station

from edgeface.config import MqttConfig
from edgeface.events import Event
from edgeface.service.mqtt.client import MqttPublisher
from edgeface.service.sinks import JsonlSink


def broker_free_run(events: list[Event]) -> list[dict[str, object]]:
    stream = io.StringIO()
    sink = JsonlSink(stream)
    for event in events:
        sink.publish(event)
    sink.close()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class FaultRun:
    """Publisher -> gate -> private broker <- collector; the test kills and restarts the broker."""

    def __init__(self, tmp_path: Path) -> None:
        self.station = unique_station()
        self.broker = PrivateBroker(tmp_path)
        self.broker.start()
        self.gate = Gate(self.broker.port)
        self.gate.is_open.set()
        self.collector = Collector(self.broker.port, f"edgeface/{self.station}/events/#")
        config = MqttConfig(
            url=f"mqtt://127.0.0.1:{self.gate.port}",
            outbox_path=tmp_path / "outbox.sqlite",
            reconnect_min_s=0.05,
            reconnect_max_s=0.5,
            keepalive_s=5,
        )
        self.publisher = MqttPublisher(config, self.station).start()
        self.outages = 0

    def outage(self, sig: int, down_s: float) -> None:
        """Shut the gate, kill the broker, keep it down, restart it, let the subscriber back in
        first, then open the gate for the publisher."""
        self.gate.is_open.clear()
        self.broker.stop(sig)
        time.sleep(down_s)
        self.broker.start()
        if not self.collector.subscribed.wait(10):
            raise TimeoutError("the collector did not resubscribe")
        self.gate.is_open.set()
        self.outages += 1

    def produce(self, events: list[Event], interval_s: float) -> threading.Thread:
        def run() -> None:
            for event in events:
                self.publisher.publish(event)
                time.sleep(interval_s)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def finish(self, events: list[Event], timeout_s: float = 30) -> dict[str, int]:
        delivered = self.publisher.wait_until_delivered(timeout_s)
        assert delivered, f"outbox still holds {len(self.publisher.outbox)} events after {timeout_s} s"
        self.collector.wait_for(len(events), 5)
        time.sleep(0.2)  # late duplicates, if any
        received = self.collector.payloads()
        unique = self.collector.unique_events()
        counts = {
            "sent": len(events),
            "received_raw": len(received),
            "unique": len(unique),
            "duplicates": len(received) - len(unique),
            "broker_outages": self.outages,
            "dropped": self.publisher.outbox.dropped,
            "outbox_left": len(self.publisher.outbox),
        }
        print(f"\nfault run counts: {counts}")
        assert unique == broker_free_run(events), "subscriber's events differ from the broker-free run"
        assert counts["dropped"] == 0 and counts["outbox_left"] == 0
        return counts

    def close(self) -> None:
        self.publisher.close(flush_timeout_s=0)
        self.collector.close()
        self.gate.close()
        self.broker.close()


@pytest.fixture
def fault_run(tmp_path: Path):  # type: ignore[no-untyped-def]
    run = FaultRun(tmp_path)
    yield run
    run.close()


@pytest.mark.slow
def test_repeated_sigkill_and_sigterm_lose_nothing(fault_run: FaultRun) -> None:
    events = make_events(600, fault_run.station)
    producer = fault_run.produce(events, interval_s=0.006)
    signals = [signal.SIGKILL, signal.SIGTERM] * 4
    for sig in signals:
        time.sleep(0.25)
        fault_run.outage(sig, down_s=0.2)
    producer.join(30)
    counts = fault_run.finish(events)
    assert counts["broker_outages"] == len(signals)
    assert counts["unique"] == counts["sent"] == 600


@pytest.mark.slow
def test_long_outage_loses_nothing(fault_run: FaultRun) -> None:
    outage_s = float(os.environ.get("EDGEFACE_OUTAGE_S", "5"))
    events = make_events(400, fault_run.station)
    producer = fault_run.produce(events[:100], interval_s=0.005)
    producer.join(30)
    fault_run.gate.is_open.clear()
    fault_run.broker.stop(signal.SIGKILL)
    # events keep coming while the broker is away: they wait in the outbox
    during = fault_run.produce(events[100:300], interval_s=outage_s / 250)
    time.sleep(outage_s)
    during.join(outage_s + 10)
    waiting = len(fault_run.publisher.outbox)
    assert not fault_run.publisher.connected
    fault_run.broker.start()
    assert fault_run.collector.subscribed.wait(10)
    fault_run.gate.is_open.set()
    fault_run.outages += 1
    fault_run.produce(events[300:], interval_s=0.005).join(30)
    counts = fault_run.finish(events, timeout_s=60)
    print(f"outage {outage_s:.0f} s: {waiting} events waited in the outbox")
    assert waiting >= 200
    assert counts["unique"] == 400
