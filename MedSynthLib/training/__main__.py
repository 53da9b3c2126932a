"""``python -m MedSynthLib.training`` and ``torchrun --nproc_per_node N -m MedSynthLib.training``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
