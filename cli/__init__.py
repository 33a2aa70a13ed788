"""Command-line interface of purerigl (installed as purerigl.cli): parses options, prints, exits.
The top layer: may import every part of the package; nothing imports it.
"""
