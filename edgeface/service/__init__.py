"""The running station: `app.build_station` (the one factory), the station's commands, Home Assistant
and stats, the MQTT client, sinks, systemd and the doctor."""
