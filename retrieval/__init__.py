"""retrieve: fine-grained recognition by retrieval (the ML side)."""

__version__ = "0.1.0"
