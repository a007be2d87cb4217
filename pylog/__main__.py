"""python -m pylog: the pylog command (see pylog.cli)."""
from .cli import main

raise SystemExit(main())
