"""``cryospa mask``: a soft solvent mask from a map, as RELION's MaskCreate (relion_mask_create).

Steps (RELION's semantics, voxel for voxel):

1. low-pass the map to ``--lowpass`` Å (raised-cosine edge of 2 Fourier shells at the shell
   ``round(box x angpix / lowpass)``); 0 skips it;
2. binarise: 1 where the low-passed map is >= ``--threshold``;
3. extend the binary mask by ``--extend`` pixels (every voxel closer than that to a 1-voxel
   becomes 1; a negative value shrinks it);
4. add a raised-cosine soft edge ``--soft-edge`` pixels wide outside it
   (``0.5 + 0.5 cos(pi d / width)`` at distance ``d``).

The threshold depends on the map's scale: pick one at which the low-passed map shows no noise
outside the particle (the tutorial's map: 0.005; often 0.01-0.04 for RELION refinements). Outputs
``mask.mrc`` (a Mask, values in [0, 1]) and ``mask.png``: the mask's outline (0.5 solid, the
outer end of the soft edge dashed) over the central slices of the map.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryospa.compute.device import resolve_device
from cryospa.core.masks import mask_from_map
from cryospa.errors import InputFileError
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

__all__ = ["MaskCreate"]

_DESCRIPTION = __doc__ or ""


def _value_hint(values: np.ndarray) -> str:
    q = np.percentile(values, [90, 99, 99.9])
    return (f"the map spans [{float(values.min()):.4g}, {float(values.max()):.4g}]; its 90th / "
            f"99th / 99.9th percentiles are {q[0]:.4g} / {q[1]:.4g} / {q[2]:.4g}")


@register
class MaskCreate(PerItemJob):
    """Make a soft mask from a map (low-pass, threshold, extend, soft edge)."""

    name = "mask"
    folder = "MaskCreate"
    relion_type = 12  # PROC_MASKCREATE
    streamable = False
    description = _DESCRIPTION
    params = (
        Param("threshold", float, None, required=True, relion="inimask_threshold",
              help="initial binarisation threshold: voxels of the low-passed map at or above it "
              "are inside (the tutorial's map: 0.005; choose one that shows no noise outside "
              "the particle)"),
        Param("lowpass", float, 15.0, unit="Å", range=(0, None), relion="lowpass_filter",
              help="low-pass the map to this resolution before binarising (0: no filter)"),
        Param("extend", float, 3.0, unit="px", relion="extend_inimask",
              help="extend the binary mask by this many pixels (negative: shrink it)"),
        Param("soft_edge", float, 6.0, unit="px", range=(0, None), relion="width_mask_edge",
              help="width of the raised-cosine soft edge added outside the binary mask"),
        Param("invert", bool, False, help="invert the final mask (1 - mask)"),
        Param("angpix", float, None, unit="Å", range=(0, None), open_min=True, relion="angpix",
              help="pixel size of the map (default: from its MRC header)"),
        DEVICE_PARAM,
    )
    inputs = (Input("volume", (NodeType.VOLUME,), relion="fn_in",
                    help="the map to make the mask from (e.g. a refinement's run_class001.mrc)"),)
    outputs = (Output("mask", NodeType.MASK, "mask.mrc"),)
    citations = ("Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",)

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """A cubic map with a pixel size; a threshold within the map's values."""
        resolve_device(str(params["device"]))
        path = Path(inputs["volume"][0].path)
        path = path if path.is_absolute() else project_dir / path
        map_info(path, what="map", angpix=params["angpix"])
        data, _ = load_map(path, what="map", angpix=params["angpix"])
        if float(params["threshold"]) > float(data.max()):
            raise InputFileError(
                path, f"--threshold {params['threshold']:g} is above every value of the map, "
                "so the mask would be empty", "give a lower threshold: " + _value_hint(data),
            )

    def list_items(self, ctx: JobContext) -> list[str]:
        """One item: the input map."""
        return [ctx.input("volume").path]

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Make, check and write the mask and its picture."""
        p = ctx.params
        data, info = load_map(ctx.abs(key), what="map", angpix=p["angpix"])
        device = resolve_device(str(p["device"]))
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        vol = torch.from_numpy(data).to(device, dtype)
        lowpass = float(p["lowpass"]) if p["lowpass"] else None
        mask = mask_from_map(vol, threshold=float(p["threshold"]), lowpass_angstrom=lowpass,
                             pixel_size_angstrom=info.pixel_size_angstrom,
                             extend_px=float(p["extend"]), soft_edge_px=float(p["soft_edge"]))
        if float(mask.max()) == 0.0:
            raise InputFileError(
                ctx.abs(key), f"no voxel of the map low-passed to {lowpass or 0:g} Å reaches "
                f"--threshold {p['threshold']:g} (after --extend {p['extend']:g}): the mask "
                "would be empty", "give a lower threshold: " + _value_hint(data),
            )
        if float(mask.min()) == 1.0:
            raise InputFileError(
                ctx.abs(key), f"every voxel of the low-passed map reaches --threshold "
                f"{p['threshold']:g}: the mask would fill the box",
                "give a higher threshold: " + _value_hint(data),
            )
        if p["invert"]:
            mask = 1.0 - mask
        arr = mask.cpu().numpy().astype(np.float32)
        write_mrc(ctx.path("mask.mrc"), arr, voxel_size_angstrom=info.pixel_size_angstrom)
        fraction = float((arr > 0.5).mean())
        from cryospa.plots.postprocess import plot_mask_over_map  # matplotlib only here

        plot_mask_over_map(
            ctx.path("mask.png"), data, arr,
            title=f"{ctx.job_name}: mask > 0.5 on {100 * fraction:.1f} % of the box "
            f"(threshold {p['threshold']:g}, low-pass {lowpass or 0:g} Å, extend "
            f"{p['extend']:g} px, soft edge {p['soft_edge']:g} px)",
        )
        return {"box": info.box, "angpix": info.pixel_size_angstrom, "fraction": fraction}

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``mask > 0.5 on 12.3 % of a 96 px box at 1.5 Å/px``."""
        r = results[0][1]
        return (f"mask > 0.5 on {100 * r['fraction']:.1f} % of a {r['box']} px box at "
                f"{r['angpix']:.4g} Å/px")

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 MaskCreate job options for its GUI."""
        return {"do_helix": "No"}
