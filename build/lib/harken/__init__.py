"""Harken: listens to industrial machines and reports when one starts to sound wrong.

One import namespace for the three parts that live in the repository's top-level folders
(pyproject.toml maps them): ``harken.agent`` (the device: agent/), ``harken.training``
(the workstation: training/) and ``harken.export`` (bundles: export/). Importing
``harken`` itself loads none of them, so a device pays nothing for the workstation side.
"""
