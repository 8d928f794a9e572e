"""Where work runs: device choice, threads (later: worker pools, MPI ranks, queue submission)."""
