"""Home Assistant MQTT discovery: one device per station, its entities announced on the broker.

Why: Home Assistant creates entities from retained JSON configs on
``<discovery prefix>/<component>/<node>/<object>/config``; with ``mqtt.homeassistant: true`` a
station shows up there as one device (a defect binary sensor, fps / defects per hour / outbox
depth / health sensors, the latest heatmap as an image entity) without anyone writing YAML.
Every entity reads the station's own topics (ARCHITECTURE.md §6) and is available while
``<prefix>/<station>/status`` says ``online``; nothing is published twice for Home Assistant.

When: on every connect (a clean-start session has lost its subscriptions, and a broker without
persistence has lost the retained configs), and again when Home Assistant announces itself with
``online`` on ``<discovery prefix>/status`` (its birth message after a restart). Both run in paho's
network thread, which only queues the publishes: nothing blocks. Anything else on that topic is
counted, logged once and otherwise ignored.

Entities switched off in the config (``health.enabled``, ``heatmaps.enabled``/``heatmaps.mqtt``)
get an empty retained config, which is how Home Assistant deletes a discovered entity.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from edge import __version__

HA_STATUS_ONLINE = b"online"
HA_STATUS_OFFLINE = b"offline"
DISCOVERY_CONFIGS = 6  # messages per announcement (defect, fps, defects/h, outbox, health, heatmap)
JUNK_SHOWN = 40  # bytes of a junk payload quoted in the (one) log line
_NODE_RE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Device:
    """What the discovery configs say about the station: the device card in Home Assistant."""

    model: str = "seam-qc"  # the model bundle's name, shown as the device's model
    sw_version: str = __version__
    health: bool = True  # announce the health sensor (health.enabled)
    heatmap: bool = True  # announce the heatmap image (heatmaps.enabled and heatmaps.mqtt)


def node_id(prefix: str, station: str) -> str:
    """The discovery node id: ``<prefix>_<station>`` with anything but ``[A-Za-z0-9_-]`` as ``_``.

    Why the prefix too: two deployments with different ``mqtt.prefix`` on one broker may reuse
    station names; their devices must not merge.
    """
    return _NODE_RE.sub("_", f"{prefix}_{station}")


def discovery(
    discovery_prefix: str, prefix: str, station: str, device: Device | None = None
) -> list[tuple[str, bytes]]:
    """The retained discovery messages of a station, ``(topic, payload)``, in announcement order.

    An empty payload deletes an entity the config switched off.
    """
    dev = device or Device()
    base = f"{prefix}/{station}"
    node = node_id(prefix, station)
    card = {
        "identifiers": [node],
        "name": station,
        "manufacturer": "seam-qc",
        "model": dev.model,
        "sw_version": dev.sw_version,
    }
    common = {
        "availability_topic": f"{base}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": card,
        "origin": {"name": "seam-qc", "sw_version": dev.sw_version},
    }
    stats = f"{base}/stats"
    entities: list[tuple[str, str, dict[str, Any] | None]] = [
        (
            "binary_sensor",
            "defect",
            {
                "name": "Defect",
                "state_topic": f"{base}/defect",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "problem",
                "qos": 1,
            },
        ),
        (
            "sensor",
            "fps",
            {
                "name": "Frames per second",
                "state_topic": stats,
                "value_template": "{{ value_json.fps }}",
                "unit_of_measurement": "fps",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "icon": "mdi:speedometer",
            },
        ),
        (
            "sensor",
            "defects_per_hour",
            {
                "name": "Defects per hour",
                "state_topic": stats,
                "value_template": "{{ value_json.defects_per_hour }}",
                "unit_of_measurement": "defects/h",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "icon": "mdi:alert-decagram",
            },
        ),
        (
            "sensor",
            "outbox_depth",
            {
                "name": "Outbox depth",
                "state_topic": stats,
                "value_template": "{{ value_json.outbox_depth }}",
                "unit_of_measurement": "alerts",
                "state_class": "measurement",
                "entity_category": "diagnostic",
                "icon": "mdi:tray-full",
            },
        ),
        (
            "sensor",
            "health",
            {
                "name": "Camera health",
                "state_topic": f"{base}/health",
                "value_template": "{{ value_json.state }}",
                "json_attributes_topic": f"{base}/health",  # conditions, metrics, baseline
                "qos": 1,
                "icon": "mdi:cctv",
            }
            if dev.health
            else None,
        ),
        (
            "image",
            "heatmap",
            {
                "name": "Heatmap",
                "image_topic": f"{base}/heatmap",
                "content_type": "image/jpeg",
                "icon": "mdi:image-filter-center-focus",
            }
            if dev.heatmap
            else None,
        ),
    ]
    out = []
    for component, obj, conf in entities:
        topic = f"{discovery_prefix}/{component}/{node}/{obj}/config"
        if conf is None:
            out.append((topic, b""))
            continue
        payload = {
            **conf,
            "unique_id": f"{node}_{obj}",
            "default_entity_id": f"{component}.{node}_{obj}",
            **common,
        }
        out.append((topic, json.dumps(payload, separators=(",", ":")).encode("utf-8")))
    return out


class Announcer:
    """Publishes a station's discovery configs on each connect and on Home Assistant's ``online``.

    All of it runs in paho's network thread (``on_connect`` through the outbox sender's hook, the
    message callback for ``<discovery prefix>/status``), which is the only writer of the counters.
    """

    def __init__(
        self,
        client: mqtt.Client,
        messages: list[tuple[str, bytes]],
        discovery_prefix: str,
        log: logging.Logger | None = None,
    ):
        self.client = client
        self.messages = messages
        self.status_topic = f"{discovery_prefix}/status"
        self.log = log or logging.getLogger(__name__)
        self.announced = 0  # announcements made (each publishes every config)
        self.junk = 0  # messages on the status topic that were neither online nor offline
        self._said_junk = False
        client.message_callback_add(self.status_topic, self._on_status)

    def on_connect(self, client: mqtt.Client) -> None:
        """Subscribe to Home Assistant's status and announce (a clean session starts with nothing)."""
        client.subscribe(self.status_topic, qos=1)
        self.announce()

    def announce(self) -> None:
        """Publish every discovery config, retained, QoS 1; paho queues them, nothing blocks."""
        for topic, payload in self.messages:
            self.client.publish(topic, payload, qos=1, retain=True)
        self.announced += 1
        self.log.info(
            "Home Assistant discovery: %d configs announced under %s (announcement %d)",
            sum(1 for _, p in self.messages if p),
            self.status_topic.rsplit("/", 1)[0],
            self.announced,
        )

    def _on_status(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Home Assistant's birth (``online``) re-announces; its ``offline`` needs nothing.

        A retained ``online`` is the broker's memory of an earlier start, delivered on our own
        subscribe right after we announced: not news, so only a live one re-announces.
        """
        payload = bytes(msg.payload)
        if payload == HA_STATUS_ONLINE:
            if not msg.retain:
                self.announce()
            return
        if payload == HA_STATUS_OFFLINE:
            return
        self.junk += 1
        if not self._said_junk:
            self._said_junk = True
            shown = payload[:JUNK_SHOWN]
            more = f"… ({len(payload)} bytes)" if len(payload) > JUNK_SHOWN else ""
            self.log.warning(
                "Home Assistant discovery: ignored %r%s on %s (expected online or offline; counted in "
                "stats as mqtt_junk; logged once)",
                shown,
                more,
                msg.topic,
            )
