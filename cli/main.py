"""The ``purerigl`` command: a click group; each command lives in its own module and is listed in COMMANDS.

To add a command: write ``cli/<name>.py`` with a ``@click.command()`` function, import it below and
append it to :data:`COMMANDS`. Library errors (:class:`purerigl.errors.PureriglError`) raised inside
any command are reported as one-line usage errors with exit code 2 by :class:`PureriglGroup`; shared
options (``--backend``, ``--seed``, shapes) are in :mod:`purerigl.cli._options`.
"""

from __future__ import annotations

import click

import purerigl

from ._errors import PureriglGroup
from .bench import bench
from .check import check
from .demo import demo
from .evaluate import evaluate
from .export import export
from .info import info
from .inspect import inspect
from .plot import plot
from .sweep import sweep
from .train import train
from .verify_update import verify_update

#: Every subcommand of ``purerigl`` (``--help`` lists them alphabetically with their first doc line).
COMMANDS = [
    train,
    evaluate,
    info,
    check,
    demo,
    bench,
    sweep,
    inspect,
    plot,
    verify_update,
    export,
]


@click.group(cls=PureriglGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(purerigl.__version__, "-V", "--version", prog_name="purerigl")
def main() -> None:
    """purerigl: dynamic sparse training with weights that are never dense.

    Backends are chosen with --backend or the PURERIGL_BACKEND environment variable (default cpu).
    Run `purerigl COMMAND --help` for a command's options.
    """


for _command in COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
