"""The REST ingress of the CosyVoice2 service, its settings, app builder and command line."""

__version__ = "0.1.0"
