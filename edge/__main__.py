"""``python -m edge`` is ``reedge``."""

from edge.app.cli import main

raise SystemExit(main())
