"""Code that the device agent and the workstation tools share and that belongs to neither:
the error classes and how a command line reports them, the name -> class registry of the
plugin seams, atomic file writes, logging set-up. Imports nothing from harken.agent,
harken.training or harken.export (tests/agent/test_import_rules.py)."""
