"""`python -m loraplex.modelgen --preset tiny --out DIR`: make-model without installing."""

from __future__ import annotations

import sys

from loraplex.modelgen.command import main

sys.exit(main())
