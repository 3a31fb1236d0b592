"""Routers per resource: devices, rounds (protocol), model, status/log, predict, dashboard."""
