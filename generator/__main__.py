"""Entry point for `python -m generator`."""

from ._cli import main

raise SystemExit(main())
