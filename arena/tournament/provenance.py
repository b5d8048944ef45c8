"""Where and with what a result was produced: packages, host, device, times."""
from __future__ import annotations

import importlib.metadata as md
import platform
import socket
import sys

import torch

PACKAGES = ("adversarial-arena", "torch", "numpy", "pydantic", "pluggy", "scikit-learn", "keras", "tensorflow-cpu",
            "tensorflow", "ray")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(device: torch.device) -> dict:
    """Provenance recorded with every run."""
    return {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
    }
