"""``python -m client`` runs the ``query`` command."""

from client.cli import main

raise SystemExit(main())
