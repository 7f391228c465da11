"""Home Assistant MQTT discovery (``mqtt.homeassistant: true``): payloads against the keys Home
Assistant documents, and a real Mosquitto: retained configs, re-announcement on HA's ``online``,
junk on ``homeassistant/status`` counted and logged once."""

from __future__ import annotations

import json
import logging
import re
import signal

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import load_config
from edge.errors import ConfigError
from edge.homeassistant import DISCOVERY_CONFIGS, Device, discovery, node_id
from tests.support.daemon import SHIPPED, daemon_config, daemon_log, noise_video, start_daemon, wait_exit
from tests.support.wait import wait_until

# The configuration variables of home-assistant.io/integrations/{binary_sensor,sensor,image}.mqtt/
# (the discovery schema drops anything else silently, so a misspelt key would just vanish).
COMMON = {
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "default_entity_id",
    "device",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "object_id",
    "origin",
    "payload_available",
    "payload_not_available",
    "platform",
    "qos",
    "unique_id",
}
DOCUMENTED = {
    "binary_sensor": COMMON
    | {"device_class", "expire_after", "force_update", "off_delay", "payload_off", "payload_on", "state_topic"}
    | {"value_template"},
    "sensor": COMMON
    | {"device_class", "expire_after", "force_update", "last_reset_value_template", "options"}
    | {"state_class", "state_topic", "suggested_display_precision", "unit_of_measurement", "value_template"},
    "image": COMMON | {"content_type", "image_encoding", "image_topic", "url_template", "url_topic"},
}
REQUIRED = {"binary_sensor": {"state_topic"}, "sensor": {"state_topic"}, "image": {"image_topic"}}
DEVICE_KEYS = {
    "configuration_url",
    "connections",
    "hw_version",
    "identifiers",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "serial_number",
    "suggested_area",
    "sw_version",
    "via_device",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
BINARY_SENSOR_CLASSES = {"problem", "safety", "running", "connectivity"}  # the ones a defect could be
STATE_CLASSES = {"measurement", "total", "total_increasing", "measurement_angle"}
TOPIC_RE = re.compile(r"^homeassistant/(binary_sensor|sensor|image)/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)/config$")
TEMPLATE_RE = re.compile(r"^\{\{ value_json\.([a-z_]+) \}\}$")


def configs(msgs: list[tuple[str, bytes]]) -> dict[str, dict]:
    return {t: json.loads(p) for t, p in msgs if p}


def test_discovery_payloads_use_only_documented_keys_one_device_availability_from_status():
    msgs = discovery("homeassistant", "seamqc", "sew-03", Device(model="resnet-int8-gap", sw_version="1.2.3"))
    assert len(msgs) == DISCOVERY_CONFIGS
    got = configs(msgs)
    kinds = sorted((TOPIC_RE.match(t).group(1), TOPIC_RE.match(t).group(3)) for t in got)  # type: ignore[union-attr]
    assert kinds == [
        ("binary_sensor", "defect"),
        ("image", "heatmap"),
        ("sensor", "defects_per_hour"),
        ("sensor", "fps"),
        ("sensor", "health"),
        ("sensor", "outbox_depth"),
    ]
    uids = set()
    for topic, c in got.items():
        m = TOPIC_RE.match(topic)
        assert m, topic
        component, node, obj = m.groups()
        assert node == "seamqc_sew-03"
        assert set(c) <= DOCUMENTED[component], (topic, set(c) - DOCUMENTED[component])
        assert REQUIRED[component] <= set(c), topic
        assert "object_id" not in c  # deprecated since HA 2025.10 for default_entity_id (removed 2026.4)
        assert c["default_entity_id"] == f"{component}.{node}_{obj}" and c["unique_id"] == f"{node}_{obj}"
        uids.add(c["unique_id"])
        assert c["name"] and not c["name"].startswith("sew-03")  # HA strips a device-name prefix
        # availability from the station's retained status (online / offline as last will)
        assert (c["availability_topic"], c["payload_available"], c["payload_not_available"]) == (
            "seamqc/sew-03/status",
            "online",
            "offline",
        )
        assert "availability" not in c  # HA: not together with availability_topic
        dev = c["device"]
        assert set(dev) <= DEVICE_KEYS and dev["identifiers"] == ["seamqc_sew-03"]
        assert (dev["name"], dev["model"], dev["sw_version"]) == ("sew-03", "resnet-int8-gap", "1.2.3")
        assert set(c["origin"]) <= ORIGIN_KEYS and c["origin"]["name"] == "seam-qc"
        if "value_template" in c:
            assert TEMPLATE_RE.match(c["value_template"]), c["value_template"]
        if "state_class" in c:
            assert c["state_class"] in STATE_CLASSES
        if "qos" in c:
            assert c["qos"] in (0, 1, 2)
        for key in ("state_topic", "image_topic", "json_attributes_topic"):
            if key in c:
                assert c[key].startswith("seamqc/sew-03/") and not set(c[key]) & {"+", "#"}
    assert len(uids) == len(got)  # one entity per unique_id
    defect = got["homeassistant/binary_sensor/seamqc_sew-03/defect/config"]
    assert (defect["state_topic"], defect["payload_on"], defect["payload_off"]) == ("seamqc/sew-03/defect", "ON", "OFF")
    assert defect["device_class"] in BINARY_SENSOR_CLASSES
    image = got["homeassistant/image/seamqc_sew-03/heatmap/config"]
    assert image["image_topic"] == "seamqc/sew-03/heatmap" and image["content_type"] == "image/jpeg"
    assert "image_encoding" not in image  # raw JPEG bytes, as /heatmap carries them
    health = got["homeassistant/sensor/seamqc_sew-03/health/config"]
    assert health["state_topic"] == health["json_attributes_topic"] == "seamqc/sew-03/health"
    assert "unit_of_measurement" not in health and "state_class" not in health  # a text state


def test_switched_off_entities_get_an_empty_config_and_node_ids_are_safe():
    msgs = dict(discovery("ha", "factory/seamqc", "st.1", Device(health=False, heatmap=False)))
    assert msgs["ha/sensor/factory_seamqc_st_1/health/config"] == b""  # HA deletes the entity
    assert msgs["ha/image/factory_seamqc_st_1/heatmap/config"] == b""
    assert json.loads(msgs["ha/binary_sensor/factory_seamqc_st_1/defect/config"])["state_topic"] == (
        "factory/seamqc/st.1/defect"
    )
    assert node_id("seamqc", "a b/c+#") == "seamqc_a_b_c__"


def test_homeassistant_option_is_strict(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {bundle: /b}\nmqtt:\n  host: localhost\n  homeassistant: maybe\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert ei.value.exit_code == 78 and "\n" not in msg
    assert msg.startswith(f"{p}:4: mqtt.homeassistant: ") and "maybe" in msg, msg
    p.write_text("model: {bundle: /b}\nmqtt:\n  homeassistant_prefix: 'ha/#'\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(ei.value).startswith(f"{p}:3: mqtt.homeassistant_prefix: "), str(ei.value)
    p.write_text("model: {bundle: /b}\nmqtt:\n  homeassistant: true\n")
    cfg = load_config(p)
    assert cfg.mqtt.homeassistant is True and cfg.mqtt.homeassistant_prefix == "homeassistant"
    p.write_text("model: {bundle: /b}\n")
    assert load_config(p).mqtt.homeassistant is False  # opt-in


def publish(broker, topic: str, payload: bytes, retain: bool = False) -> None:
    """One QoS 1 publish from a separate client, acknowledged before returning."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_announces_retained_qos1_reannounces_on_ha_online_and_survives_junk(
    mqtt_broker, mqtt_subscriber, mqtt_publisher, caplog
):
    disc = "homeassistant/+/seamqc_st1/+/config"
    defect_cfg = "homeassistant/binary_sensor/seamqc_st1/defect/config"
    # Home Assistant's birth left retained on the broker from an earlier start: not news
    publish(mqtt_broker, "homeassistant/status", b"online", retain=True)
    live = mqtt_subscriber(mqtt_broker, disc, qos=2)  # QoS 2 subscription: we see the publish QoS
    log = logging.getLogger("test.ha")
    pub = mqtt_publisher(mqtt_broker, station="st1", homeassistant=True, log=log)
    first = live.wait_count(defect_cfg, 1)
    assert first[0].qos == 1
    late = mqtt_subscriber(mqtt_broker, disc)  # Home Assistant starting later still finds them
    retained = [late.wait_for(t) for t, p in discovery("homeassistant", "seamqc", "st1") if p]
    assert len(retained) == DISCOVERY_CONFIGS and all(m.retain for m in retained)
    assert json.loads(retained[0].payload)["device"]["identifiers"] == ["seamqc_st1"]

    with caplog.at_level(logging.WARNING, logger="test.ha"):
        publish(mqtt_broker, "homeassistant/status", b"\x00\xffnot a status" * 20)
        publish(mqtt_broker, "homeassistant/status", b"{}")
        publish(mqtt_broker, "homeassistant/status", b"offline")  # HA going down: nothing to do
        wait_until(lambda: pub.junk == 2, what="two junk messages counted")
    # the retained `online` (delivered on the subscribe) and `offline` announced nothing
    assert pub.announcer is not None and pub.announcer.announced == 1
    assert len(live.on(defect_cfg)) == 1
    junk_lines = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert len(junk_lines) == 1 and "homeassistant/status" in junk_lines[0].getMessage()
    assert len(junk_lines[0].getMessage()) < 400  # a long payload is cut

    publish(mqtt_broker, "homeassistant/status", b"online")  # HA restarted: its birth message
    again = live.wait_count(defect_cfg, 2)
    assert again[1].payload == again[0].payload and pub.announcer.announced == 2
    for t, p in discovery("homeassistant", "seamqc", "st1"):
        if p:
            live.wait_count(t, 2)
    assert pub.connected  # the junk cost nothing: still connected, still announcing


def test_without_the_option_nothing_is_announced_nor_subscribed(mqtt_broker, mqtt_subscriber, mqtt_publisher):
    sub = mqtt_subscriber(mqtt_broker, ["homeassistant/#", "seamqc/st1/status"])
    pub = mqtt_publisher(mqtt_broker, station="st1")
    sub.wait_for("seamqc/st1/status", lambda m: m.text == "online")
    publish(mqtt_broker, "homeassistant/status", b"junk")
    sub.wait_for("homeassistant/status")  # delivered to the subscriber, so the broker routed it
    assert pub.announcer is None and pub.junk == 0
    assert [m.topic for m in sub.messages if m.topic.endswith("/config")] == []


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "manifest.json").exists(), reason="needs the shipped bundle")
def test_daemon_announces_device_reannounces_on_ha_online_counts_junk(tmp_path, mqtt_broker, mqtt_subscriber):
    node = "seamqc_test-st"
    sub = mqtt_subscriber(mqtt_broker, [f"homeassistant/+/{node}/+/config", "seamqc/test-st/#"])
    cfg = daemon_config(
        tmp_path,
        SHIPPED,  # no alerts needed here, and no model to train
        noise_video(tmp_path / "noise.mp4", frames=30),
        mqtt_broker,
        camera={"loop": True, "realtime": True},  # runs until told to stop
        mqtt={"homeassistant": True},
        stats_interval=0.3,
    )
    proc = start_daemon(cfg)
    try:
        defect_cfg = f"homeassistant/binary_sensor/{node}/defect/config"
        c = sub.wait_for(defect_cfg, timeout=60).json()
        assert c["device"]["model"] == json.loads((SHIPPED / "manifest.json").read_text())["name"]
        late = mqtt_subscriber(mqtt_broker, f"homeassistant/+/{node}/+/config")
        assert late.wait_for(defect_cfg).retain
        # every sensor's template names a number the daemon really publishes
        stats = sub.wait_for("seamqc/test-st/stats", lambda m: m.json()["frames"] > 0).json()
        health = sub.wait_for("seamqc/test-st/health").json()
        for t, _ in discovery("homeassistant", "seamqc", "test-st"):
            entity = late.wait_for(t).json()
            source = {"seamqc/test-st/stats": stats, "seamqc/test-st/health": health}.get(entity.get("state_topic"))
            if source is None:  # the defect binary sensor and the heatmap image take the payload as it is
                assert {entity.get("state_topic"), entity.get("image_topic")} & {
                    "seamqc/test-st/defect",
                    "seamqc/test-st/heatmap",
                }
                continue
            key = TEMPLATE_RE.match(entity["value_template"])
            assert key, entity["value_template"]
            value = source[key.group(1)]
            if source is stats:
                assert isinstance(value, (int, float)) and not isinstance(value, bool), (key.group(1), value)
            else:
                assert isinstance(value, str) and value  # ok, or blurred,idle…
        publish(mqtt_broker, "homeassistant/status", b"online")
        sub.wait_count(defect_cfg, 2)
        publish(mqtt_broker, "homeassistant/status", b"not-json-not-a-status")
        sub.wait_for("seamqc/test-st/stats", lambda m: m.json().get("mqtt_junk") == 1)
    finally:
        proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, timeout=30) == 0, daemon_log(cfg)[-3000:]
    text = daemon_log(cfg)
    assert text.count("Home Assistant discovery: ignored") == 1
    assert text.count("Home Assistant discovery: 6 configs announced") == 2
