"""M-step: sufficient statistics, reconstruction of the references and the other parameters.

With ``c(kappa) = m(kappa) / (2 sigma2_g(kappa))`` (``m`` the coefficient's multiplicity, see
:mod:`cryospa.engine.coefficients`), the E-step accumulates for every pose ``p = (k, j)`` (class,
in-plane angle) and optics group ``g``::

    data_g[p]   = sum_{i in g} sum_t w_ipt c CTF_i X_it      (complex)
    weight_g[p] = sum_{i in g} sum_t w_ipt c CTF_i^2

(``X_it`` the centred image shifted by translation ``t``). Since ``c sigma2 = m / 2``, the
back-projection sums of RELION's M-step are ``D_p = (2 / m) sum_g data_g[p] = sum w CTF X /
sigma2`` and ``W_p = (2 / m) sum_g weight_g[p] = sum w CTF^2 / sigma2``. Each slice ``p`` is
inserted into class ``k``'s padded 2D Fourier grid at its rotation and the reference is
reconstructed as ``D / (W + 1 / (T tau2_k))`` (Scheres 2012, J. Mol. Biol. 415:406, eq. 13;
:func:`cryospa.core.backprojection.reconstruct`), then masked with the particle mask.

The other updates (Scheres 2012, J. Struct. Biol. 180:519):

* ``pi_k`` = posterior mass of class ``k`` / N;
* ``sigma_offset^2 = sum_i sum w |origin_i + t|^2 / (2 N)`` (two dimensions);
* ``sigma2_g(s)`` = mean over the group's particles and shell ``s`` of the expected residual
  power ``E_w |X_it - CTF_i A_p|^2 = |X_i|^2 - 2 Re[CTF X conj(A)] + CTF^2 |A|^2``, the middle
  and last terms read off ``data_g`` and ``weight_g``; beyond the current resolution the
  reference is zero and the residual is the image power, as RELION;
* ``tau2_k(s)``: the power spectrum of the new reference (RELION recomputes it from the
  references at the start of every iteration; non-gold-standard runs have no FSC);
* the spectral SNR ``data_vs_prior_k(s) = T tau2_k(s) mean_shell(W_k)``; a class's resolution is
  the last shell before it drops below 1, and the next E-step uses the best class's resolution
  plus ``incr_size`` shells (RELION ``--incr_size``, 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryospa.core.backprojection import backproject, make_backprojector, reconstruct
from cryospa.core.projection import make_projector, project
from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.data import centred_rfft
from cryospa.engine.sampling import rotations_2d

__all__ = [
    "SufficientStatistics",
    "class_resolution_shells",
    "expected_pose_errors",
    "power_spectrum",
    "reconstruct_references",
    "update_noise",
]

#: RELION's ``minres_map``: shells below this get no Wiener regularisation.
MIN_REGULARISED_SHELL = 5


@dataclass
class SufficientStatistics:
    """Sums of one E-step (see the module docstring).

    Attributes
    ----------
    data
        ``(G, P, M, 2)`` float32 real view of ``data_g[p]``.
    weight
        ``(G, P, M)`` float32 ``weight_g[p]``.
    power
        ``(G, n // 2 + 1)`` float64 summed image power per shell (full grid).
    count
        ``(G,)`` float64 particles seen per group.
    class_mass
        ``(K,)`` float64 summed posterior per class.
    offset_sq_px2
        Summed posterior-weighted ``|origin + t|^2`` (pixels^2).
    log_likelihood, pmax_sum
        Summed log-likelihood contributions and largest posterior probabilities.
    """

    data: torch.Tensor
    weight: torch.Tensor
    power: torch.Tensor
    count: torch.Tensor
    class_mass: torch.Tensor
    offset_sq_px2: torch.Tensor
    log_likelihood: torch.Tensor
    pmax_sum: torch.Tensor

    @classmethod
    def zeros(
        cls,
        *,
        n_groups: int,
        n_poses: int,
        n_coefficients: int,
        n_shells: int,
        n_classes: int,
        device: torch.device,
    ) -> SufficientStatistics:
        """Empty sums."""
        f64 = torch.float64
        return cls(
            data=torch.zeros((n_groups, n_poses, n_coefficients, 2), device=device),
            weight=torch.zeros((n_groups, n_poses, n_coefficients), device=device),
            power=torch.zeros((n_groups, n_shells), dtype=f64, device=device),
            count=torch.zeros(n_groups, dtype=f64, device=device),
            class_mass=torch.zeros(n_classes, dtype=f64, device=device),
            offset_sq_px2=torch.zeros((), dtype=f64, device=device),
            log_likelihood=torch.zeros((), dtype=f64, device=device),
            pmax_sum=torch.zeros((), dtype=f64, device=device),
        )

    def backprojection_sums(self, subset: FourierSubset) -> tuple[torch.Tensor, torch.Tensor]:
        """The back-projection sums over all groups.

        ``D (P, M)`` complex ``sum w CTF X / sigma2`` and ``W (P, M)`` real ``sum w CTF^2 /
        sigma2``.
        """
        scale = 2.0 / subset.multiplicity  # (M,) = 1 / (c sigma2)
        d = torch.view_as_complex(self.data.sum(0).contiguous()) * scale
        return d, self.weight.sum(0) * scale


def power_spectrum(images: torch.Tensor, full: FourierSubset) -> torch.Tensor:
    """Mean ``|X|^2`` per shell of ``(..., n, n)`` real images: ``(..., n // 2 + 1)`` float64.

    Ortho transform; shells with no coefficient are 0.
    """
    sums = full.shell_sums((full.gather(centred_rfft(images)).abs() ** 2).to(torch.float64))
    counts = full.shell_counts.to(sums.device)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))


def mean_shell_weight(
    weight: torch.Tensor, subset: FourierSubset, n_classes: int
) -> torch.Tensor:
    """Mean weight per grid point and shell of each class's 2D reconstruction.

    ``(P, M)`` slice weights -> ``(K, n // 2 + 1)``; rotations only move weight within a shell.
    """
    per_class = weight.reshape(n_classes, -1, subset.size).sum(1).to(torch.float64)  # (K, M)
    sums = subset.shell_sums(per_class)
    counts = subset.shell_counts.to(sums.device)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))


def reconstruct_references(
    d: torch.Tensor,
    w: torch.Tensor,
    *,
    subset: FourierSubset,
    psi_degrees: torch.Tensor,
    tau2: torch.Tensor,
    tau2_fudge: float,
    mask: torch.Tensor,
    padding_factor: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Regularised 2D reconstruction of every class from its slices.

    Parameters
    ----------
    d, w
        ``(K J, M)`` back-projection sums (see :meth:`SufficientStatistics.backprojection_sums`),
        class-major (pose ``k J + j``).
    subset
        Their coefficients.
    psi_degrees
        ``(J,)`` in-plane angles of the slices.
    tau2
        ``(K, n // 2 + 1)`` signal power per shell (ortho units) of the previous references.
    tau2_fudge
        RELION's ``T``.
    mask
        ``(n, n)`` particle mask applied to the references.

    Returns
    -------
    references, mean_weight
        ``(K, n, n)`` float32 masked references and ``(K, n // 2 + 1)`` mean reconstruction
        weight per shell (for the spectral SNR).
    """
    n = subset.box_size
    n_psi = psi_degrees.numel()
    k_classes = d.shape[0] // n_psi
    device = d.device
    mean_w = mean_shell_weight(w, subset, k_classes)
    rots = rotations_2d(psi_degrees.to(device=device, dtype=torch.float64)).to(torch.float32)
    osamp = padding_factor**2
    refs = torch.zeros((k_classes, n, n), dtype=torch.float32, device=device)
    shells = torch.arange(tau2.shape[-1], device=device)
    for k in range(k_classes):
        wk = w[k * n_psi : (k + 1) * n_psi]
        if not bool((wk > 0).any()):
            continue  # an empty class stays empty (RELION: pdf_class = 0)
        root = torch.sqrt(wk.clamp(min=0))
        values = torch.where(root > 0, d[k * n_psi : (k + 1) * n_psi] / root.clamp(min=1e-30),
                             torch.zeros_like(d[:1]))
        bp = make_backprojector(n, ndim=2, padding_factor=padding_factor, device=device)
        # inserting (D / sqrt(W)) with "CTF" sqrt(W) adds exactly D to the data and W to the
        # weights; the data are scaled by n for the unnormalised transform reconstruct() inverts
        backproject(bp, subset.scatter(values * n), rots, ctf=subset.scatter(root))
        t2 = tau2[k].to(device=device, dtype=torch.float64).clone()
        # RELION: a zero tau2 gets the weak prior 1 / (0.001 W) instead of a wall
        fallback = 1e-3 * mean_w[k] / (tau2_fudge * osamp * osamp)
        t2 = torch.where(t2 > 0, t2, fallback)
        t2 = torch.where(shells < MIN_REGULARISED_SHELL, torch.full_like(t2, 1e30), t2)
        refs[k] = reconstruct(bp, tau2=t2, tau2_fudge=tau2_fudge, mask_radius_px=None) * mask
    return refs, mean_w


def class_resolution_shells(data_vs_prior: torch.Tensor, max_shell: int) -> torch.Tensor:
    """``(K, S)`` spectral SNR -> ``(K,)`` long last shell (>= 0) before it drops below 1.

    As RELION's ``updateCurrentResolution``: the first shell ``s >= 1`` with SNR < 1, minus one;
    ``max_shell`` if it never drops inside the current resolution.
    """
    snr = data_vs_prior[:, 1 : max_shell + 1]
    below = snr < 1.0
    first = torch.where(below.any(1), below.to(torch.int64).argmax(1) + 1, max_shell + 1)
    return first - 1


def update_noise(
    stats: SufficientStatistics,
    refs: torch.Tensor,
    *,
    subset: FourierSubset,
    full: FourierSubset,
    sigma2: torch.Tensor,
) -> torch.Tensor:
    """New ``(G, S)`` noise spectra from the expected residual power (module docstring).

    ``refs`` are the ``(P, M)`` projections the E-step used; groups without particles keep
    their old spectrum.
    """
    new = sigma2.clone().to(torch.float64)
    full_counts = full.shell_counts.to(sigma2.device)
    conj_refs = refs.conj()
    ref_power = (refs.abs() ** 2).to(torch.float64)
    for g in range(sigma2.shape[0]):
        n_g = float(stats.count[g])
        if n_g <= 0:
            continue
        inv_c = (2.0 * subset.per_coefficient(sigma2[g]) / subset.multiplicity).to(
            torch.float64
        )  # 1 / c = 2 sigma2 / m
        data = torch.view_as_complex(stats.data[g].contiguous())
        cross = 2.0 * (conj_refs * data).real.sum(0).to(torch.float64) * inv_c  # (M,)
        model = (ref_power * stats.weight[g].to(torch.float64)).sum(0) * inv_c
        inside = subset.shell_sums(model - cross)  # (S,) full-FFT sums
        residual = stats.power[g] + inside
        value = residual / (n_g * full_counts.clamp(min=1))
        ok = (full_counts > 0) & (value > 0)
        new[g] = torch.where(ok, value, new[g])
    return new


def expected_pose_errors(
    references: torch.Tensor,
    mean_cc2: torch.Tensor,
    *,
    subset: FourierSubset,
    pixel_size_angstrom: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RELION's accuracies: the pose change that costs one unit of log-likelihood.

    For class ``k`` with the mean (over its particles) per-coefficient weight ``c CTF^2``,
    ``E(delta) = sum_kappa mean_cc2 |A_k - A_k(delta)|^2`` is the expected change of the
    log-likelihood when the reference is turned by ``delta`` degrees (or shifted by ``delta``
    pixels, averaged over x and y). The accuracy is the smallest ``delta`` with ``E >= 1``
    (RELION's ``calculateExpectedAngularErrors``).

    Returns
    -------
    rotation_degrees, translation_angstrom
        ``(K,)`` float64 (999 when never reached, as RELION).
    """
    device = references.device
    n = subset.box_size
    angles = torch.logspace(math.log10(0.05), math.log10(180.0), 64, dtype=torch.float64)
    proj = make_projector(references, ndim=2)
    rots = rotations_2d(torch.cat([angles.new_zeros(1), angles])).to(device, torch.float32)
    turned = subset.gather(project(proj, rots)) / n  # (K, 1 + R, M)
    e_rot = (mean_cc2[:, None, :] * (turned[:, 1:] - turned[:, :1]).abs() ** 2).sum(-1)
    shifts = torch.logspace(-2, math.log10(n / 4), 64, dtype=torch.float64, device=device)
    a2 = (turned[:, 0].abs() ** 2 * mean_cc2).to(torch.float64)  # (K, M)
    sx = torch.sin(math.pi * subset.kx.to(torch.float64)[None, :] * shifts[:, None]) ** 2
    sy = torch.sin(math.pi * subset.ky.to(torch.float64)[None, :] * shifts[:, None]) ** 2
    e_trans = 4.0 * a2 @ (0.5 * (sx + sy)).T  # (K, D)

    def first_reach(e: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        hit = e.to(torch.float64) >= 1.0
        idx = hit.to(torch.int64).argmax(1)
        val = grid.to(e.device)[idx]
        return torch.where(hit.any(1), val, torch.full_like(val, 999.0)).to(torch.float64)

    rot = first_reach(e_rot, angles)
    trans = first_reach(e_trans, shifts)
    trans = torch.where(trans < 999.0, trans * pixel_size_angstrom, trans)
    return rot.cpu(), trans.cpu()
