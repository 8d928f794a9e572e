"""Where work runs: device choice, threads, and executors for the items of per-item jobs.

* :mod:`~cryospa.compute.device`: torch device and CPU threads.
* :mod:`~cryospa.compute.executor`: inline and local process-pool executors; MPI ranks and
  queue submission plug in later behind the same interface.
"""
