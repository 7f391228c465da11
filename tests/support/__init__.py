"""Shared test helpers and fixture plugins (registered in tests/conftest.py); test files import
helpers from here, never from each other.

* ``wait``: ``wait_until`` (the one polling wait).
* ``mqtt``: Mosquitto/subscriber/publisher fixtures on ``convert.harness``.
* ``model``: the tiny data set / model / bundle fixtures.
* ``daemon``: the daemon as a subprocess (``convert.harness.DaemonProcess``), configs, videos, log events.
"""
