"""Reporting: what is read off runs and shown to people. May import every layer below it; nothing
below imports it.

:mod:`.summary` (``purerigl inspect``), :mod:`.plots` (``purerigl plot``), :mod:`.sweep` and
:mod:`.sweep_plot` (a sweep's cells, table and figure), :mod:`.provenance` (which code trained a run), :mod:`.tour` and :mod:`.excerpts` (the worked
examples and code excerpts of the docs, generated from the code). matplotlib is imported only where
a figure is drawn.
"""
