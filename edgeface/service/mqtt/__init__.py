"""MQTT: the publisher with its outbox (`client`), commands and their signatures (`commands`), secrets."""
