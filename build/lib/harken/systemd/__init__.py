"""The systemd unit, shipped in the wheel as package data (``harken systemd-unit`` prints it)."""
