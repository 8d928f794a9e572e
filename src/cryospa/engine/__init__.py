"""The ML engine: regularised-likelihood classification and alignment (RELION's model).

Model (Scheres 2012, J. Mol. Biol. 415:406 and J. Struct. Biol. 180:519; Sigworth 1998, J.
Struct. Biol. 122:328): the Fourier transform of particle image ``i`` of optics group ``g`` is

    X_i(kappa) = CTF_i(kappa) [R_phi A_k](kappa) exp(-2 pi i kappa . t) + N_i(kappa)

with class reference ``A_k`` turned by the in-plane angle (2D) or projected at the orientation
(3D) ``phi``, translation ``t`` and independent complex Gaussian noise of power ``sigma2_g(s)``
per resolution shell ``s``. Class, orientation and translation are hidden: the E-step computes
their posterior for every particle (prior ``pi_k`` on classes, uniform on angles, Gaussian of
``sigma_offset`` on the particle's origin), the M-step maximises the expected complete-data
log-posterior: CTF-weighted back-projection regularised by the Gaussian prior on the reference
coefficients of power ``tau2_k(s)`` (with RELION's fudge ``T``), class fractions, the noise
spectra and ``sigma_offset``. Adaptive oversampling (Scheres 2016, Methods Enzymol. 579:125)
searches a coarse grid first and refines only the poses that hold most of the posterior.

Conventions:

* Fourier transforms: ``torch.fft.rfft2`` of the image with its centre pixel ``n // 2`` moved to
  the origin, ``norm="ortho"``, so that white noise of real-space variance ``v`` has power ``v``
  per coefficient; spectra (``sigma2``, ``tau2``) are in these units. RELION's files use its own
  normalisation (``/ n^2`` and per real component): conversions are at the file boundary.
* Only the coefficients with ``1 <= shell <= current_shell`` are used (a flat index set,
  :class:`~cryospa.engine.coefficients.FourierSubset`), as complex64; the shell of a
  coefficient is ``round(|k| n)``.
* In-plane rotations: RELION's 2D matrices (top-left block of ``euler_to_matrix((0, 0, psi))``),
  reference turned as ``ref(R^T r)``; origins in pixels inside the engine, a particle sits at
  ``centre - origin`` (RELION's ``rlnOriginX/YAngst`` divided by the pixel size).
* Everything runs on the device of the tensors it is given (CPU or CUDA), in batches.

Modules: :mod:`~cryospa.engine.coefficients` (the coefficient set), :mod:`~cryospa.engine.sampling`
(in-plane pose grids), :mod:`~cryospa.engine.data` (particle sources, batch preparation),
:mod:`~cryospa.engine.estep` (posteriors as matrix products), :mod:`~cryospa.engine.mstep`
(sufficient statistics and updates), :mod:`~cryospa.engine.model` (state and checkpoints),
:mod:`~cryospa.engine.em2d` (the 2D classification driver), :mod:`~cryospa.engine.minibatch`
(mini-batch, VDAM-like steps).
"""

from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.data import ParticleSource, TensorParticles
from cryospa.engine.em2d import Class2DOptions, initialise, iterate, particle_mask
from cryospa.engine.model import ClassModel, ParticleState, load_checkpoint, save_checkpoint
from cryospa.engine.sampling import InPlaneSampling

__all__ = [
    "Class2DOptions",
    "ClassModel",
    "FourierSubset",
    "InPlaneSampling",
    "ParticleSource",
    "ParticleState",
    "TensorParticles",
    "initialise",
    "iterate",
    "load_checkpoint",
    "particle_mask",
    "save_checkpoint",
]
