"""`python -m mufun_local` is the `mufun-local` command."""
import sys

from .cli import main

sys.exit(main())
