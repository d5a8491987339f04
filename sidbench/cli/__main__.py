"""`python -m sidbench.cli`: the same as the `sidbench` command (torchrun starts the DDP processes this way)."""
import sys

from sidbench.cli import main

sys.exit(main())
