"""MQTT fixtures (owned by the publish/outbox area): a real Mosquitto on a free loopback port."""
