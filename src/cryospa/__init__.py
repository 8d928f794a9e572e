"""cryospa: cryo-EM single-particle analysis, from movies to validated maps.

Layers (imports point downwards only): ``cli`` -> ``jobs`` -> ``engine`` -> ``project`` /
``compute`` -> ``core`` (pure tensor maths) and ``io`` (files).
"""

import os as _os

__version__ = "0.1.0"

# torch's OpenMP threads spin while they wait for each other; on a shared or oversubscribed
# machine a descheduled thread then stalls every parallel region (2D classification iterations
# 30x slower measured on a busy 2-core machine). Sleeping waits cost microseconds. Only takes
# effect when cryospa is imported before torch (the command line does so).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
