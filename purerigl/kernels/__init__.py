"""Sparse operations: one NumPy spec (``reference``) and compiled backends with the same signatures."""

from .registry import OPS, Backend, available_backends, get_backend

__all__ = ["OPS", "Backend", "available_backends", "get_backend"]
