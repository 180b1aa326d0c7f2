"""Device discovery and description (never imports the server, CLI, video or Ray layers)."""

from gpufleet.devices.device import Device

__all__ = ["Device"]
