"""Networks (built from MONAI) and model packages (safetensors weights + JSON metadata)."""

from .networks import BUILDERS, build_network
from .package import (
    BUNDLED_DIR,
    FORMAT_VERSION,
    LoadedModel,
    PackageInfo,
    bundled_package,
    list_packages,
    load_package,
    read_package_info,
    save_package,
)

__all__ = [
    "BUILDERS",
    "build_network",
    "BUNDLED_DIR",
    "FORMAT_VERSION",
    "LoadedModel",
    "PackageInfo",
    "bundled_package",
    "list_packages",
    "load_package",
    "read_package_info",
    "save_package",
]
