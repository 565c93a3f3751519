"""The operator's loop on site (docs/agent.md "The operator's loop"): false alarms taught
back (feedback), maintenance mode, the commands that reach a running daemon (its control
socket, MQTT), and the audit log of every change."""
