"""dcr-stream: Kafka call-intent events to Truecaller's Dynamic Call Records API."""

__version__ = "0.1.0"

__all__ = ["__version__"]
