"""
Tests for L{netguard.admitting}: admission control around any Twisted factory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, capturedLogs
from twisted.trial import unittest

from netguard.admission import Admission, AdmissionPolicy, Refusal, Slot
from netguard.admitting import AdmissionAware, Admitted, AdmittingFactory


class Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hello\r\n")


def address(host: str = "192.0.2.9") -> IPv4Address:
    return IPv4Address("TCP", host, 40000)


class AdmittingFactoryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def factory(self, **policy: Any) -> AdmittingFactory:
        admission = Admission(AdmissionPolicy(**policy), self.clock)
        return AdmittingFactory(Factory.forProtocol(Hello), admission, write_timeout=30.0)

    def connect(self, factory: AdmittingFactory, host: str = "192.0.2.9") -> tuple[Any, Any]:
        with capturedLogs() as self.events:
            protocol = factory.buildProtocol(address(host))
        if protocol is None:
            return None, None
        transport = StringTransport(peerAddress=address(host))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_admitted_connection_reaches_the_application(self) -> None:
        _, transport = self.connect(self.factory())
        self.assertEqual(transport.value(), b"hello\r\n")

    def test_refused_connection_gets_one_line_and_a_close(self) -> None:
        factory = self.factory(per_source_max=1)
        self.connect(factory)
        _, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"ERR BUSY per-source-cap\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            [(e["event"], e["reason"]) for e in self.events if "event" in e],
            [("conn.reject", "per-source-cap")],
        )

    def test_silent_mode_builds_nothing(self) -> None:
        factory = self.factory(per_source_max=1, reject_mode="close")
        self.connect(factory)
        self.assertEqual(self.connect(factory), (None, None))

    def test_closing_gives_the_slot_back(self) -> None:
        factory = self.factory(per_source_max=1)
        first, _ = self.connect(factory)
        first.connectionLost(None)
        _, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"hello\r\n")

    def test_application_that_raises_gives_the_slot_back(self) -> None:
        """
        An application factory whose C{buildProtocol} raises does not keep the admission
        slot: with one slot per source, the next connection from that source is admitted.
        """

        class Broken(Factory):
            def buildProtocol(self, addr: Any) -> Any:
                raise RuntimeError("a bug of the application")

        admission = Admission(AdmissionPolicy(per_source_max=1), self.clock)
        broken = AdmittingFactory(Broken(), admission, write_timeout=30.0)
        self.assertRaises(RuntimeError, broken.buildProtocol, address("192.0.2.9"))
        self.assertEqual(admission.snapshot()["unauthenticated"], 0)
        working = AdmittingFactory(Factory.forProtocol(Hello), admission, write_timeout=30.0)
        _, transport = self.connect(working)
        self.assertEqual(transport.value(), b"hello\r\n")

    def test_promote_moves_to_the_authenticated_pool(self) -> None:
        factory = self.factory(max_relays=1)
        first, _ = self.connect(factory)
        second, _ = self.connect(factory, "192.0.2.10")
        self.assertIsNone(first.promote())
        self.assertEqual(factory.admission.snapshot()["relays"], 1)
        self.assertEqual(second.promote().reason, "relay-cap")
        first.connectionLost(None)
        self.assertEqual(factory.admission.snapshot()["relays"], 0)

    def test_offences_lead_to_a_block(self) -> None:
        factory = self.factory()
        protocol, _ = self.connect(factory)
        self.assertEqual(protocol.offence("early_talker"), 10.0)
        protocol.connectionLost(None)
        _, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"ERR BUSY penalised\r\n")

    def test_refusal_line_not_taken_is_aborted_after_write_timeout(self) -> None:
        """
        On a transport that is not a plain socket (TLS, a PROXY-header wrapper; here a
        L{StringTransport}), a refused peer that does not read its refusal line is cut off
        after the write timeout; one whose connection ends first leaves no timer behind.
        """
        factory = self.factory(per_source_max=1)
        self.connect(factory)
        refusal, transport = self.connect(factory)
        self.clock.advance(29.9)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        other, _ = self.connect(factory)
        other.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_write_timeout_defaults_to_the_framing_default(self) -> None:
        """
        Without C{write_timeout}, a refusal line gets the framing's default write timeout.
        """
        admission = Admission(AdmissionPolicy(), self.clock)
        factory = AdmittingFactory(Factory.forProtocol(Hello), admission)
        self.assertEqual(factory.write_timeout, 30.0)
        self.assertIs(factory.clock, self.clock)


class RefusalLoggingTests(unittest.TestCase):
    """
    Refusals are logged one by one only for the first few of a source and reason in an
    interval; the rest are counted and summarised (L{netguard.refusal_log}).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []

    def factory(self, **policy: Any) -> AdmittingFactory:
        admission = Admission(AdmissionPolicy(**policy), self.clock)
        return AdmittingFactory(
            Factory.forProtocol(Hello),
            admission,
            write_timeout=30.0,
            log=Logger(observer=self.events.append),
        )

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    def test_flood_logs_three_then_one_summary(self) -> None:
        """
        Seven refusals of one source and reason in an interval: three C{conn.reject} events,
        then, when the interval ends, one C{conn.reject.summary} with the other four.
        """
        factory = self.factory(deny=["192.0.2.0/24"], reject_mode="close")
        for _ in range(7):
            self.assertIsNone(factory.buildProtocol(address()))
        self.assertEqual(
            [(e["peer"], e["reason"]) for e in self.named("conn.reject")],
            [("192.0.2.9:40000", "denied")] * 3,
        )
        self.assertEqual(self.named("conn.reject.summary"), [])
        self.clock.advance(10.0)
        [summary] = self.named("conn.reject.summary")
        self.assertEqual(
            (summary["source"], summary["reason"], summary["count"], summary["logged"]),
            ("192.0.2.9/32", "denied", 4, 3),
        )

    def test_sources_are_logged_apart(self) -> None:
        """
        A flood from one source does not use up another source's individual lines.
        """
        factory = self.factory(deny=["192.0.2.0/24"], reject_mode="close")
        for _ in range(5):
            factory.buildProtocol(address("192.0.2.1"))
        factory.buildProtocol(address("192.0.2.2"))
        self.assertEqual(
            [e["peer"] for e in self.named("conn.reject")],
            ["192.0.2.1:40000"] * 3 + ["192.0.2.2:40000"],
        )

    def test_every_refusal_is_counted_by_an_aware_factory(self) -> None:
        """
        An L{AdmissionAware} factory is told of every refusal (its counters count them all),
        also of those not logged one by one.
        """
        aware = AwareFactory()
        admission = Admission(AdmissionPolicy(deny=["192.0.2.0/24"]), self.clock)
        factory = AdmittingFactory(aware, admission, log=Logger(observer=self.events.append))
        for _ in range(5):
            factory.buildProtocol(address())
        self.assertEqual(len(aware.refusals), 5)
        self.assertEqual([e["conn_id"] for e in self.named("conn.reject")], ["c1", "c2", "c3"])

    def test_blocks_go_through_the_refusal_log(self) -> None:
        """
        C{admission.block} of the factory's admission goes through its refusal log: of five
        blocks (each an extension) of one source and kind in an interval, three are logged,
        and stopping the factory summarises the other two; every block still applies. An
        admission handed to the factory later is wired the same way.
        """
        factory = self.factory(penalty_threshold=1)
        with capturedLogs() as blocks:
            for _ in range(5):
                self.assertIsNotNone(factory.admission.offence(address(), "auth_failure"))
        self.assertEqual(len([e for e in blocks if e.get("event") == "admission.block"]), 3)
        factory.doStart()
        factory.doStop()
        [summary] = self.named("conn.reject.summary")
        self.assertEqual((summary["of"], summary["count"]), ("admission.block", 2))
        replaced = Admission(AdmissionPolicy(penalty_threshold=1), self.clock)
        factory.admission = replaced
        self.assertIs(replaced._penalty_table.refusal_log, factory.refusal_log)

    def test_admission_alone_logs_every_block(self) -> None:
        """
        The other side: an L{Admission} used without the factory logs every block.
        """
        admission = Admission(AdmissionPolicy(penalty_threshold=1), self.clock)
        with capturedLogs() as blocks:
            for _ in range(5):
                admission.offence(address(), "auth_failure")
        self.assertEqual(len([e for e in blocks if e.get("event") == "admission.block"]), 5)

    def test_stopping_logs_the_pending_summary(self) -> None:
        """
        When the last listener stops, the refusals only counted so far are summarised at
        once, and no timer is left.
        """
        factory = self.factory(deny=["192.0.2.0/24"])
        for _ in range(5):
            factory.buildProtocol(address())
        self.clock.advance(1.0)
        factory.doStart()
        factory.doStop()
        [summary] = self.named("conn.reject.summary")
        self.assertEqual((summary["count"], summary["seconds"]), (2, 1.0))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AwareFactory(Factory):
    """
    An L{AdmissionAware} factory: keeps what it is handed, builds L{Hello}s unwrapped.
    """

    def __init__(self) -> None:
        self.admitted: list[Admitted] = []
        self.refusals: list[Refusal] = []

    def build_admitted(self, addr: Any, admitted: Admitted) -> Protocol:
        self.admitted.append(admitted)
        return Hello()

    def refused(self, addr: Any, refusal: Refusal) -> dict[str, object]:
        self.refusals.append(refusal)
        return {"conn_id": f"c{len(self.refusals)}"}


class AdmissionAwareTests(unittest.TestCase):
    """
    A factory that takes admission itself gets each connection's L{Admitted} and its own
    protocols back unwrapped; refusals go through the same path, with its fields.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.aware = AwareFactory()
        self.admission = Admission(AdmissionPolicy(per_source_max=1, max_relays=1), self.clock)
        self.factory = AdmittingFactory(self.aware, self.admission, write_timeout=5.0)

    def build(self, host: str = "192.0.2.9") -> Any:
        with capturedLogs() as self.events:
            return self.factory.buildProtocol(address(host))

    def test_is_aware(self) -> None:
        self.assertIsInstance(self.aware, AdmissionAware)
        self.assertNotIsInstance(Factory.forProtocol(Hello), AdmissionAware)

    def test_admitted_hold_has_no_instance_dict(self) -> None:
        """
        Each connection's L{Admitted} and its admission L{Slot} keep their attributes in
        slots (one each per connection for its whole life).
        """
        slot = self.admission.enter(address("192.0.2.9"))
        assert isinstance(slot, Slot)
        held = Admitted(self.admission, address("192.0.2.9"), slot)
        self.assertFalse(hasattr(held, "__dict__"))
        self.assertFalse(hasattr(slot, "__dict__"))
        self.assertFalse(held.promoted)

    def test_admitted_protocol_is_not_wrapped(self) -> None:
        protocol = self.build()
        self.assertIsInstance(protocol, Hello)
        [admitted] = self.aware.admitted
        self.assertEqual(admitted.address, address())

    def test_refusal_carries_the_factory_fields(self) -> None:
        self.build()
        refusal = self.build()
        transport = StringTransport()
        refusal.makeConnection(transport)
        self.assertEqual(transport.value(), b"ERR BUSY per-source-cap\r\n")
        self.assertEqual([r.reason for r in self.aware.refusals], ["per-source-cap"])
        [event] = [e for e in self.events if e.get("event") == "conn.reject"]
        self.assertEqual(
            (event["peer"], event["reason"], event["conn_id"]),
            ("192.0.2.9:40000", "per-source-cap", "c1"),
        )
        self.clock.advance(5.0)
        self.assertTrue(transport.disconnected)

    def test_promote_offence_and_release_once(self) -> None:
        self.build()
        [admitted] = self.aware.admitted
        self.assertIsNone(admitted.promote())
        self.assertIsNone(admitted.promote())
        self.assertEqual(self.admission.snapshot()["relays"], 1)
        self.assertEqual(admitted.offence("early_talker"), 10.0)
        admitted.release()
        admitted.release()
        self.assertEqual(self.admission.snapshot()["relays"], 0)
        self.assertEqual(self.admission.snapshot()["unauthenticated"], 0)

    def test_nothing_built_gives_the_slot_back(self) -> None:
        self.aware.build_admitted = lambda addr, admitted: None  # type: ignore[method-assign]
        self.assertIsNone(self.build())
        self.assertEqual(self.admission.snapshot()["unauthenticated"], 0)


class ProbationThroughTheFactoryTests(unittest.TestCase):
    """
    Probation and eviction as an L{AdmittingFactory} applies them: an L{AdmissionAware}
    factory is handed connections on probation and evicted ones are ended through
    L{Admitted.on_evict}; any other factory gets the refusal probation stands for.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []

    def admission(self, **policy: Any) -> Admission:
        knobs: dict[str, Any] = {"max_unauthenticated": 1, "red_soft": 1}
        knobs.update(policy)
        return Admission(AdmissionPolicy(**knobs), self.clock)

    def connect(self, factory: AdmittingFactory, host: str) -> tuple[Any, StringTransport]:
        protocol = factory.buildProtocol(address(host))
        transport = StringTransport(peerAddress=address(host))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_plain_factory_gets_the_refusal(self) -> None:
        """
        A factory that is not L{AdmissionAware} never holds a connection on probation: the
        pressure reason refuses it at once, and its connections are never evicted.
        """
        factory = AdmittingFactory(
            Factory.forProtocol(Hello),
            self.admission(),
            log=Logger(observer=self.events.append),
        )
        _, first = self.connect(factory, "192.0.2.1")
        _, second = self.connect(factory, "192.0.2.2")
        self.assertEqual(second.value(), b"ERR BUSY unauth-cap\r\n")
        self.assertFalse(first.disconnecting)
        self.assertEqual(factory.admission.snapshot()["probation"], 0)

    def test_aware_factory_is_handed_probation(self) -> None:
        """
        An L{AdmissionAware} factory builds a connection on probation, told by
        C{admitted.probation}; entering the lane ends the probation.
        """
        aware = AwareFactory()
        factory = AdmittingFactory(
            aware, self.admission(), log=Logger(observer=self.events.append)
        )
        self.connect(factory, "192.0.2.1")
        self.connect(factory, "192.0.2.1")
        first, second = aware.admitted
        self.assertIsNone(first.probation)
        self.assertEqual(second.probation, Refusal("unauth-cap"))
        self.assertIsNone(second.enter_lane())
        self.assertIsNone(second.probation)
        self.assertTrue(second.lane)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_default_handler_ends_probation_as_a_refusal(self) -> None:
        """
        A protocol that leaves C{on_evict} unset gets the factory's default: at the end of
        probation the reason line is written, the connection closed, the factory told and
        the end logged as a refusal of that reason.
        """
        aware = AwareFactory()
        factory = AdmittingFactory(
            aware, self.admission(), log=Logger(observer=self.events.append)
        )
        self.connect(factory, "192.0.2.1")
        _, transport = self.connect(factory, "192.0.2.1")
        transport.clear()
        self.clock.advance(1.0)
        self.assertEqual(transport.value(), b"ERR BUSY unauth-cap\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual([r.reason for r in aware.refusals], ["unauth-cap"])
        [event] = [e for e in self.events if e.get("event") == "conn.reject"]
        self.assertEqual((event["reason"], event["ended"]), ("unauth-cap", True))

    def test_protocol_handler_replaces_the_default(self) -> None:
        """
        A handler the protocol sets is the one called on eviction; the evicted
        connection's later release changes nothing.
        """
        aware = AwareFactory()
        admission = self.admission()
        factory = AdmittingFactory(aware, admission, log=Logger(observer=self.events.append))
        self.connect(factory, "192.0.2.1")
        [first] = aware.admitted
        reasons: list[str] = []
        first.on_evict = reasons.append
        self.assertEqual(first.on_evict, reasons.append)
        self.connect(factory, "192.0.2.2")
        self.assertEqual(reasons, ["evicted"])
        first.release()
        self.assertEqual(admission.snapshot()["unauthenticated"], 1)

    def test_progress_reaches_admission(self) -> None:
        """
        L{Admitted.progress} marks the connection's slot as having made progress.
        """
        aware = AwareFactory()
        factory = AdmittingFactory(
            aware, self.admission(), log=Logger(observer=self.events.append)
        )
        self.connect(factory, "192.0.2.1")
        [held] = aware.admitted
        self.assertFalse(held.slot.progressed)
        held.progress()
        self.assertTrue(held.slot.progressed)

    def test_lane_per_user_through_the_hold(self) -> None:
        """
        L{Admitted.enter_lane} passes the ticket's user: past C{lane_per_user} the hold is
        refused C{lane-cap-user} and stays on probation; the user's count is given back when
        a lane connection's hold is released, and then the same user enters.
        """
        aware = AwareFactory()
        admission = self.admission(lane_per_user=1)
        factory = AdmittingFactory(aware, admission, log=Logger(observer=self.events.append))
        for _ in range(3):
            self.connect(factory, "192.0.2.1")
        first, second, third = aware.admitted
        self.assertIsNone(second.enter_lane("alice"))
        self.assertEqual(third.enter_lane("alice"), Refusal("lane-cap-user"))
        self.assertEqual(third.probation, Refusal("unauth-cap"))
        self.assertFalse(third.lane)
        second.release()
        self.assertIsNone(third.enter_lane("alice"))
        self.assertTrue(third.lane)
