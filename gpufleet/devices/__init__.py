"""Device discovery and description (never imports the server, CLI, video or Ray layers)."""

from gpufleet.devices.arch import arch_for
from gpufleet.devices.device import Device
from gpufleet.devices.discovery import discover, select
from gpufleet.devices.nvml import mps_running

__all__ = ["Device", "arch_for", "discover", "mps_running", "select"]
