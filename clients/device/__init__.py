"""One device speaking the secagg-dp HTTP API: the transport (signed httpx), the device
process (long-poll and the round stages), and its command line (``python -m clients
device``). The round logic itself is :class:`clients.round.DeviceRound`."""

from clients.device.process import Device, RoundSession, RoundTrace, Trainer, TrainingSettings
from clients.device.transport import (
    DeviceError,
    ServerClient,
    ServerRejected,
    generate_identity,
    load_or_create_identity,
    public_key_bytes,
)

__all__ = [
    "Device", "DeviceError", "RoundSession", "RoundTrace", "ServerClient", "ServerRejected",
    "Trainer", "TrainingSettings", "generate_identity", "load_or_create_identity",
    "public_key_bytes",
]
