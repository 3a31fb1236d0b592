"""Devices and the local simulation of secagg-dp.

- ``clients.tasks``: models and data (the only part the server imports).
- ``clients.device``: one device over HTTP (``python -m clients device``).
- ``clients.simulation``: a loopback server plus N devices (``python -m clients run``).

Nothing heavy is imported here, so importing ``clients.tasks`` from the server does not
pull in the device or simulation code.
"""
