"""Root pytest configuration: the notebooks run at a small step count in the suite.

The notebooks read ``OPTAX_INVLOSS_STEPS`` (their full length when unset); the
kernels that nbmake starts inherit this process's environment.
"""

import os

os.environ.setdefault("OPTAX_INVLOSS_STEPS", "100")
