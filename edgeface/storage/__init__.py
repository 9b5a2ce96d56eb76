"""What is kept on disk: the gallery, the cluster store (and the camera loop's cluster stage), the
MQTT outbox, enrollment into the gallery, SQLite transactions and private files."""
