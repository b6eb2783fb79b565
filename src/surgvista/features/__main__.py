"""`python -m surgvista.features extract ...`."""

from surgvista.features.frames import main

raise SystemExit(main())
