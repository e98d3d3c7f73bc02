"""``python -m export`` runs the ``kmr-export`` CLI."""

from export.cli import main

raise SystemExit(main())
