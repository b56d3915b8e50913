"""``python -m router`` is the ``acr`` command."""

from router.commands.cli import main

main()
