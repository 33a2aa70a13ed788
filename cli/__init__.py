"""Command-line interface of purerigl (installed as purerigl.cli)."""
