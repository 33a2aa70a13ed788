"""Sparse operations: one NumPy spec (``reference``) and compiled backends with the same signatures;
the loss maths and the tie rule live here too. Imports only formats and errors.
"""

from .registry import OPS, Backend, available_backends, get_backend

__all__ = ["OPS", "Backend", "available_backends", "get_backend"]
