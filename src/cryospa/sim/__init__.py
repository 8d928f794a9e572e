"""Physical simulation of cryo-EM data with ground truth (``cryospa simulate``).

* :mod:`cryospa.sim.physics`: image formation shared by every level (weak-phase object, CTF
  with coherence envelopes, detector MTF, coloured noise, RELION-style normalisation).
* :mod:`cryospa.sim.particles`: ``--level particles``, extracted-particle stacks straight from
  maps, with ``particles.star`` and ``ground_truth/``.
* :mod:`cryospa.sim.micrographs`: ``--level micrographs``, summed micrographs in electron counts
  (particles in ice with a thickness field, CTF on the whole field, Poisson counts), with
  ``micrographs.star`` and ``ground_truth/`` (CTF, coordinates, particles, maps); junk.
* :mod:`cryospa.sim.movies`: ``--level movies``, raw movies (Poisson frames, radiation damage,
  beam-induced motion, gain, defects) with the true motion in RELION's motion STAR form.
* :mod:`cryospa.sim.atomic`: Coulomb potential of an atomic model (gemmi, electron scattering
  factors) and the shipped D2 model ``builtin:ldh``.
"""

from cryospa.sim.atomic import (
    DEFAULT_BUILTIN_MODEL,
    AtomicModelOptions,
    atomic_model_map,
    builtin_model_path,
)
from cryospa.sim.micrographs import (
    IceModel,
    MicrographSimulation,
    run_simulate_micrographs,
    simulate_micrographs,
    write_micrograph_simulation,
)
from cryospa.sim.movies import (
    DetectorModel,
    MotionModel,
    MovieSimulator,
    run_simulate_movies,
    write_movie_simulation,
)
from cryospa.sim.particles import (
    ParticleSimulation,
    TrueMaps,
    prepare_maps,
    read_angles,
    read_maps,
    run_simulate_particles,
    simulate_particles,
    write_particle_simulation,
)
from cryospa.sim.physics import BackgroundModel, Microscope

__all__ = [
    "DEFAULT_BUILTIN_MODEL",
    "AtomicModelOptions",
    "BackgroundModel",
    "DetectorModel",
    "IceModel",
    "MicrographSimulation",
    "Microscope",
    "MotionModel",
    "MovieSimulator",
    "ParticleSimulation",
    "TrueMaps",
    "atomic_model_map",
    "builtin_model_path",
    "prepare_maps",
    "read_angles",
    "read_maps",
    "run_simulate_micrographs",
    "run_simulate_movies",
    "run_simulate_particles",
    "simulate_micrographs",
    "simulate_particles",
    "write_micrograph_simulation",
    "write_movie_simulation",
    "write_particle_simulation",
]
