"""``python -m camlib``: the ``camlib`` command line (see :mod:`camlib.cli`).

Under torchrun: ``torchrun --nproc_per_node N -m camlib explain ...``.
"""

import sys

from camlib.cli import main

if __name__ == "__main__":
    sys.exit(main())
