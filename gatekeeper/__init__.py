"""gatekeeper: decide at accept, reject the unwanted, relay the rest, record every rejection."""

__version__ = "0.1.0"
