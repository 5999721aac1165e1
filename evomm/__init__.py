"""evomm: evolutionary model merging across architectures (LLMs, LLaVA-style VLMs, SDXL UNets)."""

__version__ = "0.1.0"
