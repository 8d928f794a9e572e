"""Pure numerics on torch tensors: no files, no project, no jobs.

Conventions (tested in ``tests/core``):

* Images are ``(..., h, w)`` (row = y, column = x), volumes ``(..., d, h, w)`` (z, y, x).
  Batch dimensions lead. The real-space centre (origin of rotations) is pixel ``n // 2`` along
  every axis, as in RELION.
* Fourier transforms use ``torch.fft.rfftn`` over the last 2 or 3 axes with the DC at index 0;
  the last axis (x) is the half axis. Spatial frequencies are in cycles per pixel unless a name
  says ``_per_angstrom``. Centred (fftshifted) layouts are only for display and interpolation.
* Euler angles follow RELION: ZYZ (rot, tilt, psi) in degrees, matrix
  ``A = Rz(psi) Ry(tilt) Rz(rot)`` with
  ``Rz(a) = [[cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]]``.
  A 2D projection image is ``P(x, y) = integral V(A^T (x, y, z)) dz``, i.e. the Fourier slice of the
  volume's transform at ``A^T (kx, ky, 0)``.
* Origins (``rlnOriginXAngst`` / ``rlnOriginYAngst``) follow RELION: the particle's centre sits at
  ``image centre - origin``; a projection of the reference is shifted by ``-origin`` to match.
* CTF: RELION / CTFFIND convention (see :mod:`cryospa.core.ctf`).
"""
