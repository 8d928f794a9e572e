"""Image formation for the simulator: weak-phase object, CTF with envelopes, detector, noise.

State model (one image of one particle, relative intensity units: the mean exposure is 1)::

    phi(r)   = sigma_e * Vp(r)                                  phase shift [rad]
    Vp(r)    = integral V(A^T (r, z)) dz                        projected potential [V Å]
    I(r)     = 1 - 2 F^-1[ CTF(k) E(k) MTF(k) F[Vp](k) ] sigma_e + n(r)
    E(k)     = Es(k) Et(k) exp(-B k^2 / 4)
    Es(k)    = exp(-(pi q0)^2 (lambda dz k - Cs lambda^3 k^3)^2),    q0 = alpha / lambda
    Et(k)    = exp(-(pi lambda delta k^2)^2 / 2),
    delta    = Cc (sigma_E / E) (1 + E / E0) / (1 + E / (2 E0)),   sigma_E = dE_fwhm / 2.355
    MTF(k)   = sinc(kx) sinc(ky)                                 (k in cycles per pixel)
    S_n(k)   = s2 [ 1 + r_ice |CTF E MTF|^2 (1 + ring(k)) + r_lf MTF^2 exp(-(k d_lf)^2) ]

* ``V`` is the Coulomb potential of the specimen relative to the surrounding vitreous ice (V);
  a map in arbitrary units is scaled so that its mean over the particle's support (voxels above
  a fraction of the map's top values, see :func:`support_mask`) equals a protein-in-ice
  contrast potential (default 2 V: protein about 5.5 to 7 V, vitreous ice about 3.5 to 4.9 V;
  Rullgård et al. 2011, J. Microsc. 243:234; Vulović et al. 2013, J. Struct. Biol. 183:19).
* ``sigma_e = 2 pi m e lambda / h^2`` (relativistic), the interaction constant in
  rad / (V Å): ``(2 pi / (lambda V)) (m0 c^2 + e V) / (2 m0 c^2 + e V)`` (Kirkland 2010,
  "Advanced computing in electron microscopy", eq. 5.6). About 7.3e-4 at 200 kV.
* Weak-phase approximation with amplitude contrast folded into the CTF: for a weak object the
  intensity is ``1 - 2 phi * h`` with ``h`` the inverse transform of RELION's CTF
  ``sin(chi + arcsin w)`` (Wade 1992, Ultramicroscopy 46:145); see :mod:`cryospa.core.ctf`.
  With underfocus the CTF is positive at low frequency, so proteins appear dark on a bright
  background, as in raw micrographs.
* Envelopes (Frank 2006, "Three-dimensional electron microscopy of macromolecular assemblies",
  ch. 2): spatial coherence of a Gaussian source of semi-angle ``alpha`` (rad) at the local
  defocus ``dz`` of the azimuth (astigmatism included); temporal coherence from the chromatic
  focal spread ``delta`` of an energy spread ``dE_fwhm`` (eV) with chromatic aberration ``Cc``
  (E the beam energy, E0 = 511 keV); a B-factor ``B`` (Å^2) for radiation damage, beam-induced
  motion left after correction and any other blur.
* Detector: an ideal counting detector (McMullan et al. 2014, Ultramicroscopy 147:156): the
  pixel aperture gives ``MTF = sinc(kx) sinc(ky)`` (0.64 at Nyquist along an axis) applied to
  everything that is an image of the specimen (particle and ice); Poisson counts in separate
  pixels are independent, so the counting-noise power is flat (noise transfer NTF = 1) and
  ``DQE = MTF^2 / NTF^2``.
* Noise ``n`` is Gaussian with the power spectrum ``S_n`` (``s2`` the shot-noise variance per
  pixel, ``1 / (dose * pixel area)`` in these units): counting noise (flat), amorphous ice
  imaged through the same CTF, envelope and MTF (``r_ice``, with the water ring at 3.67 Å), and
  slow background variation from ice thickness and illumination (``r_lf`` below
  ``1 / d_lf``) that the CTF does not modulate. Together: strong at low frequency, Thon rings,
  flat beyond, as the background of real particle images. The parameters are in
  :class:`BackgroundModel`; their defaults are rough, documented choices, not measurements.

Spatial frequencies ``k`` are in 1/Å unless a name says otherwise. Everything here is pure torch
on ``(..., h, w)`` batches; defocus values are ``(b,)`` tensors, one per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryospa.core.ctf import ctf_2d, electron_wavelength_angstrom
from cryospa.core.fourier import frequency_grid_2d
from cryospa.errors import ParameterError

__all__ = [
    "ELECTRON_REST_ENERGY_EV",
    "BackgroundModel",
    "Microscope",
    "background_power_2d",
    "coloured_noise",
    "detector_mtf_2d",
    "envelope_2d",
    "expected_masked_noise_variance",
    "interaction_constant_rad_per_volt_angstrom",
    "masked_variance",
    "normalise_background",
    "potential_scale",
    "support_mask",
    "transfer_2d",
]

#: Electron rest energy m0 c^2 in eV.
ELECTRON_REST_ENERGY_EV = 510998.95


def interaction_constant_rad_per_volt_angstrom(voltage_kv: float) -> float:
    """Relativistic interaction constant ``sigma_e`` in rad / (V Å).

    Parameters
    ----------
    voltage_kv
        Acceleration voltage in kV.

    Returns
    -------
    float
        ``(2 pi / (lambda V)) (m0 c^2 + e V) / (2 m0 c^2 + e V)``; 7.29e-4 at 200 kV,
        6.53e-4 at 300 kV.
    """
    if voltage_kv <= 0:
        raise ParameterError(f"voltage must be > 0 kV, got {voltage_kv}")
    v = voltage_kv * 1e3
    lam = float(electron_wavelength_angstrom(voltage_kv))
    e0 = ELECTRON_REST_ENERGY_EV
    return 2 * math.pi / (lam * v) * (e0 + v) / (2 * e0 + v)


@dataclass(frozen=True)
class Microscope:
    """Optics of the microscope (RELION's three CTF constants plus the coherence envelopes).

    Attributes
    ----------
    voltage_kv
        Acceleration voltage (kV).
    cs_mm
        Spherical aberration (mm).
    amplitude_contrast
        Fraction of amplitude contrast, in [0, 1).
    illumination_semiangle_mrad
        Semi-angle of the Gaussian illumination cone (mrad); spatial coherence. 0.02 mrad is a
        typical parallel FEG illumination.
    cc_mm
        Chromatic aberration (mm); temporal coherence.
    energy_spread_ev
        Full width at half maximum of the beam's energy spread (eV); 0.7 eV for a Schottky FEG.
    """

    voltage_kv: float = 200.0
    cs_mm: float = 1.4
    amplitude_contrast: float = 0.1
    illumination_semiangle_mrad: float = 0.02
    cc_mm: float = 2.7
    energy_spread_ev: float = 0.7

    def __post_init__(self) -> None:
        if self.voltage_kv <= 0:
            raise ParameterError(f"voltage must be > 0 kV, got {self.voltage_kv}")
        if self.cs_mm < 0:
            raise ParameterError(f"spherical aberration must be >= 0 mm, got {self.cs_mm}")
        if not 0 <= self.amplitude_contrast < 1:
            raise ParameterError(
                f"amplitude contrast must be in [0, 1), got {self.amplitude_contrast}"
            )
        for name in ("illumination_semiangle_mrad", "cc_mm", "energy_spread_ev"):
            if getattr(self, name) < 0:
                raise ParameterError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def wavelength_angstrom(self) -> float:
        """Relativistic electron wavelength (Å)."""
        return float(electron_wavelength_angstrom(self.voltage_kv))

    @property
    def focal_spread_angstrom(self) -> float:
        """Standard deviation ``delta`` of the chromatic focal spread (Å)."""
        e = self.voltage_kv * 1e3
        e0 = ELECTRON_REST_ENERGY_EV
        sigma_e = self.energy_spread_ev / (2 * math.sqrt(2 * math.log(2)))
        return self.cc_mm * 1e7 * sigma_e / e * (1 + e / e0) / (1 + e / (2 * e0))


@dataclass(frozen=True)
class BackgroundModel:
    """Shape of the noise power spectrum, in units of the flat counting-noise power.

    Attributes
    ----------
    ice_to_shot_power
        ``r_ice``: power of the amorphous-ice image where ``|CTF E MTF| = 1``, relative to the
        counting noise.
    water_ring_power
        Relative height of the water ring of vitreous ice in the ice spectrum.
    water_ring_angstrom
        Its position (Å); 3.67 Å for vitreous ice.
    water_ring_width_per_angstrom
        Its Gaussian standard deviation (1/Å).
    low_frequency_power
        ``r_lf``: power of slow background variation (thickness, illumination) at ``k = 0``,
        relative to the counting noise.
    low_frequency_length_angstrom
        ``d_lf``: length scale (Å) beyond which that variation has power.
    """

    ice_to_shot_power: float = 1.0
    water_ring_power: float = 1.5
    water_ring_angstrom: float = 3.67
    water_ring_width_per_angstrom: float = 0.02
    low_frequency_power: float = 3.0
    low_frequency_length_angstrom: float = 100.0

    def __post_init__(self) -> None:
        for name in (
            "ice_to_shot_power",
            "water_ring_power",
            "low_frequency_power",
        ):
            if getattr(self, name) < 0:
                raise ParameterError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "water_ring_angstrom",
            "water_ring_width_per_angstrom",
            "low_frequency_length_angstrom",
        ):
            if getattr(self, name) <= 0:
                raise ParameterError(f"{name} must be > 0, got {getattr(self, name)}")


def _per_image(x: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float or ``(b,)`` tensor as ``(b, 1, 1)`` (or a scalar tensor) on ``like``'s device."""
    t = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return t[..., None, None] if t.ndim > 0 else t


def envelope_2d(
    kx_per_angstrom: torch.Tensor,
    ky_per_angstrom: torch.Tensor,
    *,
    microscope: Microscope,
    defocus_u_angstrom: float | torch.Tensor,
    defocus_v_angstrom: float | torch.Tensor,
    astigmatism_angle_degrees: float | torch.Tensor,
    bfactor_angstrom2: float = 0.0,
) -> torch.Tensor:
    """Coherence and B-factor envelope ``E = Es Et exp(-B k^2 / 4)`` (see the module docstring).

    Parameters
    ----------
    kx_per_angstrom, ky_per_angstrom
        ``(h, w)`` frequency components (1/Å).
    microscope
        Optics.
    defocus_u_angstrom, defocus_v_angstrom, astigmatism_angle_degrees
        Floats or ``(b,)`` tensors (RELION convention); the spatial-coherence envelope uses the
        defocus along each frequency's azimuth.
    bfactor_angstrom2
        B-factor (Å^2) of the damage / blur envelope.

    Returns
    -------
    torch.Tensor
        ``(b, h, w)`` (or ``(h, w)``) envelope in (0, 1].
    """
    kx, ky = kx_per_angstrom, ky_per_angstrom
    lam = microscope.wavelength_angstrom
    cs = microscope.cs_mm * 1e7
    k2 = kx * kx + ky * ky
    k = torch.sqrt(k2)
    du = _per_image(defocus_u_angstrom, kx)
    dv = _per_image(defocus_v_angstrom, kx)
    ang = torch.deg2rad(_per_image(astigmatism_angle_degrees, kx))
    dz = 0.5 * (du + dv) + 0.5 * (du - dv) * torch.cos(2.0 * (torch.atan2(ky, kx) - ang))
    q0 = microscope.illumination_semiangle_mrad * 1e-3 / lam
    grad = lam * dz * k - cs * lam**3 * k * k2  # |grad chi| / (2 pi), in Å
    log_env = -((math.pi * q0) ** 2) * grad * grad
    delta = microscope.focal_spread_angstrom
    log_env = log_env - 0.5 * (math.pi * lam * delta) ** 2 * k2 * k2
    if bfactor_angstrom2:
        log_env = log_env - bfactor_angstrom2 * k2 / 4.0
    return torch.exp(log_env)


def detector_mtf_2d(
    shape: tuple[int, int],
    *,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """MTF of an ideal counting detector, ``sinc(kx) sinc(ky)`` (k in cycles per pixel).

    Returns ``(h, w // 2 + 1)`` (rfft) or ``(h, w)`` values; the detector pixel is the image
    pixel.
    """
    ky, kx = frequency_grid_2d(shape, 1.0, rfft=rfft, device=device, dtype=dtype)
    return torch.sinc(kx) * torch.sinc(ky)


def transfer_2d(
    shape: tuple[int, int],
    pixel_size_angstrom: float,
    *,
    microscope: Microscope,
    defocus_u_angstrom: torch.Tensor,
    defocus_v_angstrom: torch.Tensor,
    astigmatism_angle_degrees: torch.Tensor,
    bfactor_angstrom2: float = 0.0,
    rfft: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total transfer ``CTF E MTF`` of the specimen's image, and ``CTF`` alone.

    Parameters
    ----------
    shape
        ``(h, w)`` image size (pixels).
    pixel_size_angstrom
        Pixel size (Å).
    microscope
        Optics.
    defocus_u_angstrom, defocus_v_angstrom, astigmatism_angle_degrees
        ``(b,)`` tensors (RELION convention, Å and degrees); their dtype and device are used.
    bfactor_angstrom2
        Damage / blur B-factor (Å^2).
    rfft
        ``(b, h, w // 2 + 1)`` rfft grid (True) or the full ``(b, h, w)`` FFT grid.

    Returns
    -------
    tuple of torch.Tensor
        ``(transfer, ctf)``, both ``(b, h, w // 2 + 1)`` or ``(b, h, w)``, DC at index 0.
    """
    like = defocus_u_angstrom
    ky, kx = frequency_grid_2d(
        shape, pixel_size_angstrom, rfft=rfft, device=like.device, dtype=like.dtype
    )
    ctf = ctf_2d(
        kx,
        ky,
        defocus_u_angstrom=defocus_u_angstrom,
        defocus_v_angstrom=defocus_v_angstrom,
        astigmatism_angle_degrees=astigmatism_angle_degrees,
        voltage_kv=microscope.voltage_kv,
        spherical_aberration_mm=microscope.cs_mm,
        amplitude_contrast=microscope.amplitude_contrast,
    )
    env = envelope_2d(
        kx,
        ky,
        microscope=microscope,
        defocus_u_angstrom=defocus_u_angstrom,
        defocus_v_angstrom=defocus_v_angstrom,
        astigmatism_angle_degrees=astigmatism_angle_degrees,
        bfactor_angstrom2=bfactor_angstrom2,
    )
    mtf = detector_mtf_2d(shape, rfft=rfft, device=like.device, dtype=like.dtype)
    return ctf * env * mtf, ctf


def background_power_2d(
    shape: tuple[int, int],
    pixel_size_angstrom: float,
    transfer: torch.Tensor,
    *,
    background: BackgroundModel,
) -> torch.Tensor:
    """Noise power spectrum ``S_n / s2`` (units of the counting-noise power) on the full grid.

    Parameters
    ----------
    shape
        ``(h, w)`` image size (pixels).
    pixel_size_angstrom
        Pixel size (Å).
    transfer
        ``(b, h, w)`` full-grid ``CTF E MTF`` from :func:`transfer_2d` (``rfft=False``).
    background
        Shape parameters.

    Returns
    -------
    torch.Tensor
        ``(b, h, w)`` power per frequency, DC at index 0, in the convention of
        :func:`cryospa.core.filters.power_spectrum_1d` (white noise of variance ``v`` has power
        ``v``); the pixel variance of such noise is the mean over the grid.
    """
    ky, kx = frequency_grid_2d(
        shape, pixel_size_angstrom, rfft=False, device=transfer.device, dtype=transfer.dtype
    )
    k = torch.sqrt(kx * kx + ky * ky)
    ring = background.water_ring_power * torch.exp(
        -0.5
        * ((k - 1.0 / background.water_ring_angstrom) / background.water_ring_width_per_angstrom)
        ** 2
    )
    mtf = detector_mtf_2d(shape, rfft=False, device=transfer.device, dtype=transfer.dtype)
    slow = (
        background.low_frequency_power
        * mtf**2
        * torch.exp(-((k * background.low_frequency_length_angstrom) ** 2))
    )
    ice = background.ice_to_shot_power * transfer**2 * (1.0 + ring)
    return 1.0 + ice + slow


def coloured_noise(power: torch.Tensor, white: torch.Tensor) -> torch.Tensor:
    """Gaussian noise with a given power spectrum from white unit-variance noise.

    Parameters
    ----------
    power
        ``(b, h, w)`` (or broadcastable) full-grid power spectrum, DC at index 0, symmetric
        under ``k -> -k`` (convention of :func:`background_power_2d`).
    white
        ``(b, h, w)`` independent standard normal samples (real).

    Returns
    -------
    torch.Tensor
        ``(b, h, w)`` real noise images with that power spectrum (periodic).
    """
    ft = torch.fft.fft2(white) * torch.sqrt(power)
    return torch.fft.ifft2(ft).real


def masked_variance(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Variance of each image about its mean over a mask, over the mask's pixels.

    Parameters
    ----------
    images
        ``(b, h, w)`` real images.
    masks
        ``(b, h, w)`` (or broadcastable) 0 / 1 masks.

    Returns
    -------
    torch.Tensor
        ``(b,)`` ``sum(m (x - mean_m)^2) / sum(m)``.
    """
    m = masks.to(images.dtype)
    count = m.sum(dim=(-2, -1))
    mean = (images * m).sum(dim=(-2, -1)) / count
    dev = images - mean[..., None, None]
    return (dev * dev * m).sum(dim=(-2, -1)) / count


def expected_masked_noise_variance(power: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Expectation of :func:`masked_variance` for stationary noise of a given power spectrum.

    ``E = mean_k S(k) - sum_k S(k) |M(k)|^2 / (N Nm^2)`` (pixel variance minus the variance of
    the mask mean), with ``N`` pixels, ``Nm`` pixels in the mask and ``M`` its DFT.

    Parameters
    ----------
    power
        ``(b, h, w)`` full-grid power spectra (convention of :func:`background_power_2d`).
    masks
        ``(b, h, w)`` 0 / 1 masks on the same periodic grid.

    Returns
    -------
    torch.Tensor
        ``(b,)`` expected variances.
    """
    m = masks.to(power.dtype)
    n_pix = power.shape[-1] * power.shape[-2]
    nm = m.sum(dim=(-2, -1))
    mft = torch.fft.fft2(m)
    m2 = mft.real**2 + mft.imag**2
    total = power.mean(dim=(-2, -1))
    of_mean = (power * m2).sum(dim=(-2, -1)) / (n_pix * nm * nm)
    return total - of_mean


def normalise_background(
    images: torch.Tensor, *, background_radius_px: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise as RELION's extraction: background (outside a circle) zero mean, unit sd.

    Parameters
    ----------
    images
        ``(b, n, n)`` real images, centre at pixel ``n // 2``.
    background_radius_px
        Pixels farther than this from the centre are background (RELION's ``--bg_radius``;
        its default is 75 % of half the box).

    Returns
    -------
    tuple of torch.Tensor
        ``(normalised, mean, sd)``: ``(b, n, n)`` images ``(x - mean) / sd`` and the ``(b,)``
        background means and standard deviations (RELION's ramp fit is not applied).
    """
    n = images.shape[-1]
    ax = torch.arange(n, device=images.device, dtype=images.dtype) - n // 2
    r2 = ax[:, None] ** 2 + ax[None, :] ** 2
    bg = r2 > background_radius_px**2
    if not bool(bg.any()):
        raise ParameterError(
            f"background radius {background_radius_px} px leaves no background in a {n} px box"
        )
    values = images[..., bg]  # (b, n_bg)
    mean = values.mean(dim=-1)
    sd = values.std(dim=-1, correction=0)
    return (images - mean[:, None, None]) / sd[:, None, None], mean, sd


def support_mask(volume: torch.Tensor, *, support_fraction: float = 0.2) -> torch.Tensor:
    """The particle's support: voxels above a fraction of the map's 99.9th percentile.

    Parameters
    ----------
    volume
        ``(d, h, w)`` map with positive density for protein.
    support_fraction
        Threshold as a fraction of the 99.9th percentile (robust to noise in the solvent).

    Returns
    -------
    torch.Tensor
        ``(d, h, w)`` boolean mask.
    """
    flat = volume.reshape(-1).to(torch.float64)
    top = float(torch.quantile(flat[:: max(1, flat.numel() // 2_000_000)], 0.999))
    if top <= 0:
        raise ParameterError(
            "the map has no positive density (99.9th percentile <= 0): protein must be "
            "positive (invert the map's contrast first)"
        )
    return volume > support_fraction * top


def potential_scale(
    volume: torch.Tensor, *, contrast_potential_volt: float, support_fraction: float = 0.2
) -> float:
    """Factor turning a map in arbitrary units into Coulomb potential relative to ice (V).

    The factor makes the mean over the particle's support (:func:`support_mask`) equal to
    ``contrast_potential_volt``.

    Parameters
    ----------
    volume
        ``(d, h, w)`` map with positive density for protein.
    contrast_potential_volt
        Mean potential of protein relative to vitreous ice (V).
    support_fraction
        Threshold of the support, as a fraction of the 99.9th percentile.

    Returns
    -------
    float
        Multiply the map by this.
    """
    support = support_mask(volume, support_fraction=support_fraction)
    return contrast_potential_volt / float(volume[support].to(torch.float64).mean())
