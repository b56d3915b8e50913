"""``python -m router`` is the ``acr`` command."""

from router.cli import main

main()
