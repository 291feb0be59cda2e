"""Weight-sharing supernets from existing models: convert, search-space configs, subnet
extraction, and save / load of extracted subnets (safetensors + JSON, no pickle)."""

from .convert import convert, extract
from .families import detect_family
from .io import load, save
from .space import Config, Space, config_hash
from .supernet import Supernet

__all__ = [
    "Config",
    "Space",
    "Supernet",
    "config_hash",
    "convert",
    "detect_family",
    "extract",
    "load",
    "save",
]
