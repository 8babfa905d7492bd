"""``python -m projector``: the same as the ``projector`` console script."""

from projector.commands.cli import main

raise SystemExit(main())
