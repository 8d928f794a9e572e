"""``cryospa resize``: a map (or mask) to a new pixel size and box, as Scipion's crop/resize.

Scipion's ``relion - crop/resize volumes`` protocol runs ``relion_image_handler --rescale_angpix
--new_box``; this job does the same in two steps:

1. ``--angpix-out``: Fourier rescaling (crop or zero-pad the Fourier transform) to the box
   ``m = round(n * angpix / angpix_out)``, made even as RELION does, so the pixel size becomes
   ``n * angpix / m`` (within 1/m of the request; the exact value goes into the header and the
   summary). Density values (the mean) are kept.
2. ``--box-out``: crop or pad (with zeros) in real space around the centre voxel ``n // 2``.

A mask stays a mask: after rescaling its values are clipped to [0, 1]. Typical use, the
tutorial's "re-extract at 360 px, refine at 256 px": ``cryospa resize --volume job020
--angpix-out 1.244 --box-out 256``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryospa.compute.device import resolve_device
from cryospa.core.fourier import fourier_rescale
from cryospa.errors import ParameterError
from cryospa.io.mrc import write_mrc
from cryospa.jobs._maps import load_map, map_info
from cryospa.project.nodes import NodeType
from cryospa.project.schema import (
    DEVICE_PARAM,
    Input,
    JobContext,
    Output,
    Param,
    PerItemJob,
    ResolvedInput,
    RunOptions,
    register,
)

__all__ = ["Resize", "rescaled_box", "resize_volume", "window"]

_DESCRIPTION = __doc__ or ""


def rescaled_box(box: int, pixel_size_angstrom: float, new_pixel_size_angstrom: float) -> int:
    """Box after Fourier rescaling to a pixel size, as ``relion_image_handler --rescale_angpix``.

    ``round(box * pixel / new_pixel)``, minus one if odd (RELION keeps boxes even).
    """
    if not pixel_size_angstrom > 0 or not new_pixel_size_angstrom > 0:
        raise ValueError(
            f"pixel sizes must be > 0 Å, got {pixel_size_angstrom} and {new_pixel_size_angstrom}"
        )
    m = math.floor(box * pixel_size_angstrom / new_pixel_size_angstrom + 0.5)
    return m - m % 2


def window(volume: torch.Tensor, box: int) -> torch.Tensor:
    """Crop or zero-pad a ``(n, n, n)`` volume to ``(box, box, box)`` keeping voxel ``n // 2``.

    Voxel ``n // 2`` of the input becomes voxel ``box // 2`` of the output (the rotation centre
    convention of cryospa and RELION).
    """
    n = int(volume.shape[-1])
    if box < 1:
        raise ValueError(f"box must be >= 1, got {box}")
    out = volume.new_zeros((*volume.shape[:-3], box, box, box))
    start_in = max(n // 2 - box // 2, 0)
    start_out = max(box // 2 - n // 2, 0)
    size = min(n - start_in, box - start_out)
    src = (slice(start_in, start_in + size),) * 3
    dst = (slice(start_out, start_out + size),) * 3
    out[(..., *dst)] = volume[(..., *src)]
    return out


def resize_volume(
    volume: torch.Tensor,
    *,
    pixel_size_angstrom: float,
    new_pixel_size_angstrom: float | None = None,
    new_box: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Fourier-rescale to a pixel size, then crop / pad to a box.

    Parameters
    ----------
    volume
        ``(n, n, n)`` map.
    pixel_size_angstrom
        Its pixel size in Å.
    new_pixel_size_angstrom
        Requested pixel size in Å (None: keep).
    new_box
        Final box in pixels (None: the rescaled box).

    Returns
    -------
    volume : torch.Tensor
        ``(box, box, box)`` resized map, same dtype and device.
    pixel_size_angstrom : float
        The pixel size actually reached (``n * pixel / m``).

    """
    n = int(volume.shape[-1])
    pixel = float(pixel_size_angstrom)
    out = volume
    if new_pixel_size_angstrom is not None:
        m = rescaled_box(n, pixel, new_pixel_size_angstrom)
        if m < 2:
            raise ValueError(
                f"rescaling {n} px from {pixel} to {new_pixel_size_angstrom} Å/px leaves {m} px"
            )
        if m != n:
            out = fourier_rescale(volume, (m, m, m))
            pixel = n * pixel / m
    if new_box is not None and new_box != out.shape[-1]:
        out = window(out, new_box)
    return out, pixel


@register
class Resize(PerItemJob):
    """Rescale a map to a new pixel size and crop / pad it to a new box."""

    name = "resize"
    folder = "Resize"
    relion_type = 99  # no RELION job type: PROC_EXTERNAL
    streamable = False
    description = _DESCRIPTION
    params = (
        Param("angpix_out", float, None, unit="Å", range=(0, None), open_min=True,
              help="new pixel size (Fourier rescaling; the box becomes round(box x angpix / "
              "angpix_out), even); default: keep the pixel size"),
        Param("box_out", int, None, unit="px", range=(2, 4096),
              help="new box, cropped or padded with zeros around the centre after rescaling; "
              "default: the rescaled box"),
        Param("angpix", float, None, unit="Å", range=(0, None), open_min=True,
              help="pixel size of the input map (default: from its MRC header)"),
        DEVICE_PARAM,
    )
    inputs = (Input("volume", (NodeType.VOLUME, NodeType.MASK),
                    help="the map (or mask) to resize"),)
    outputs = (Output("volume", None, "resized.mrc", like="volume"),)
    citations = ("Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",)

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """A cubic map with a pixel size; at least one of --angpix-out, --box-out."""
        resolve_device(str(params["device"]))
        if params["angpix_out"] is None and params["box_out"] is None:
            raise ParameterError(
                "resize: give --angpix-out (new pixel size, Å) and / or --box-out (new box, px)"
            )
        path = Path(inputs["volume"][0].path)
        info = map_info(path if path.is_absolute() else project_dir / path, what="volume",
                        angpix=params["angpix"])
        if params["angpix_out"] is not None:
            m = rescaled_box(info.box, info.pixel_size_angstrom, float(params["angpix_out"]))
            if m < 2:
                raise ParameterError(
                    f"resize: --angpix-out {params['angpix_out']:g} Å would leave {m} px of the "
                    f"{info.box} px map at {info.pixel_size_angstrom:g} Å/px"
                )

    def list_items(self, ctx: JobContext) -> list[str]:
        """One item: the input map."""
        return [ctx.input("volume").path]

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Rescale, window, write ``resized.mrc``."""
        data, info = load_map(ctx.abs(key), what="volume", angpix=ctx.params["angpix"])
        device = resolve_device(str(ctx.params["device"]))
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        vol = torch.from_numpy(data).to(device, dtype)
        out, pixel = resize_volume(
            vol,
            pixel_size_angstrom=info.pixel_size_angstrom,
            new_pixel_size_angstrom=ctx.params["angpix_out"],
            new_box=ctx.params["box_out"],
        )
        is_mask = ctx.input("volume").node_type == NodeType.MASK
        if is_mask:
            out = out.clamp(0.0, 1.0)
        requested = ctx.params["angpix_out"]
        if requested is not None and abs(pixel - requested) > 1e-3 * requested:
            ctx.log(f"resize: {requested:g} Å/px asked, {pixel:.5g} Å/px reached (the rescaled "
                    f"box must be a whole, even number of pixels); the header has {pixel:.5g}")
        arr = out.cpu().numpy().astype(np.float32)
        write_mrc(ctx.path("resized.mrc"), arr, voxel_size_angstrom=pixel)
        return {"box_in": info.box, "angpix_in": info.pixel_size_angstrom,
                "box": int(arr.shape[0]), "angpix": pixel, "mask": bool(is_mask)}

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``96 px at 1.5 Å/px -> 64 px at 2.25 Å/px``."""
        r = results[0][1]
        return (f"{'mask' if r['mask'] else 'map'} {r['box_in']} px at {r['angpix_in']:.4g} Å/px "
                f"-> {r['box']} px at {r['angpix']:.5g} Å/px")
