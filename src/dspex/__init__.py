"""DSPex: run DSPy programs in production."""
__version__ = "0.1.0"
