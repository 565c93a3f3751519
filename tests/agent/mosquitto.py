"""Moved to harken.testkit.mosquitto, which bench/ shares; new code imports it from there.
These names stay only so that tests written against the old place (branches open while it
moved) keep working until they are repointed; then this file goes."""

from harken.testkit.mosquitto import (PASSWORD, STARTED, USER, Broker, Listener,  # noqa: F401
                                      agent_config, free_port, make_ca, make_cert,
                                      outbox_depth, run_agent, start_agent,
                                      two_machine_config)
