"""Neural-network building blocks over sparse formats."""

from .parameter import Parameter

__all__ = ["Parameter"]
