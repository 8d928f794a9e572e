"""cryospa: cryo-EM single-particle analysis, from movies to validated maps.

Layers (imports point downwards only): ``cli`` -> ``jobs`` -> ``engine`` -> ``project`` /
``compute`` -> ``core`` (pure tensor maths) and ``io`` (files).
"""

__version__ = "0.1.0"
