"""Processing steps: each glues io + core (+ engine) into one step; none parses a command line."""
