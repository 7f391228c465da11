"""The test harness's own contracts: what the broker fixtures stand on."""

from __future__ import annotations

import socket

from convert.harness import ephemeral_range, free_port


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
    for p in ports[:20]:  # each is bindable at once
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", p))
