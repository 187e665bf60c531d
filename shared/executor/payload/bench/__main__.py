"""`python -u -m bench --llm-url URL`: see bench/execution_models.py."""

import sys

from .execution_models import main

sys.exit(main())
