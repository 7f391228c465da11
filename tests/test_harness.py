"""The test harness's own contracts: what the broker fixtures stand on."""

from __future__ import annotations

import os
import socket

from convert.harness import ephemeral_range, free_port, port_span


def test_free_ports_lie_below_the_ephemeral_range_and_are_never_repeated():
    """CI once failed with "mosquitto exited with 1 … Address already in use": the broker's port came
    from ``bind(0)``, that is from the ephemeral range, and a publisher retrying a connect to it
    before the broker started was handed that very port as its source port (a TCP self-connect).
    Ports below the range cannot be handed out that way, and none is handed out twice."""
    low, high = ephemeral_range()
    assert 1024 <= low < high <= 65535
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == 300
    assert all(not (low <= p <= high) and p != 1883 and p >= 10000 for p in ports)
    first, last = port_span(
        low, high, os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    )
    assert all(first <= p <= last for p in ports)  # this worker's own share (all of it without xdist)
    for p in ports[:20]:  # each is bindable at once
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", p))


def test_each_xdist_worker_draws_ports_from_its_own_share():
    """Two workers drawing from one range could both pass the bind check on one port before either
    broker binds it; each worker's share is disjoint, and together they cover the span."""
    alone = port_span(32768, 60999)
    assert alone == (10000, 32767)
    shares = [port_span(32768, 60999, f"gw{i}", "4") for i in range(4)]
    assert shares[0][0] == 10000 and shares[-1][1] <= 32767
    for (_, a_last), (b_first, _) in zip(shares, shares[1:]):
        assert a_last + 1 == b_first  # disjoint and adjacent
    assert all(last - first + 1 == (32767 - 10000 + 1) // 4 for first, last in shares)
    assert port_span(32768, 60999, "gw1", None) == alone  # not under xdist: the whole span
    assert port_span(1024, 5000) == (5001, 65535)  # a low ephemeral range: the ports above it
