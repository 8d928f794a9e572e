"""``cryospa import volume`` / ``cryospa import mask``: a 3D map (reference, mask) as a node.

The map must be a cubic 3D MRC. The job writes a float32 copy (``volume.mrc`` / ``mask.mrc``)
with the pixel size in its header: ``--angpix`` when given (it overrides a wrong header), else
the header's. A mask must have values in [0, 1] (a soft mask as ``relion_mask_create`` makes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cryospa.errors import InputFileError
from cryospa.io.mrc import read_mrc, read_mrc_header, write_mrc
from cryospa.project.nodes import NodeType
from cryospa.project.schema import (
    JobContext,
    Output,
    Param,
    PerItemJob,
    ResolvedInput,
    RunOptions,
    register,
)

__all__ = ["ImportMask", "ImportVolume"]

_DESCRIPTION = __doc__ or ""


def _check_map(path: Path, angpix: float | None, what: str) -> float:
    info = read_mrc_header(path)
    if len(info.shape) != 3 or len(set(info.shape)) != 1:
        raise InputFileError(path, f"{what} has shape {info.shape}; a cubic 3D map is needed",
                             "resize it to a cubic box (e.g. relion_image_handler --new_box)")
    pixel = angpix if angpix else float(info.voxel_size_angstrom[0])
    if not pixel > 0:
        raise InputFileError(path, f"{what} header has no pixel size", "give --angpix")
    return pixel


class _ImportMap(PerItemJob):
    """A 3D map import; subclasses set the node type and checks."""

    folder = "Import"
    relion_type = 0  # PROC_IMPORT
    streamable = False
    what: ClassVar[str] = "map"
    file_name: ClassVar[str] = "volume.mrc"
    params = (
        Param("map", str, None, required=True, kind="file", metavar="MRC",
              help="the 3D map (.mrc)", relion="fn_in_other"),
        Param("angpix", float, None, unit="Å", range=(0, None), open_min=True,
              help="pixel size (default: from the MRC header)"),
    )
    citations = ("Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",)

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """The map must be cubic 3D with a pixel size."""
        path = Path(params["map"])
        _check_map(path if path.is_absolute() else project_dir / path, params["angpix"],
                   self.what)

    def list_items(self, ctx: JobContext) -> list[str]:
        """One item: the map."""
        return [ctx.params["map"]]

    def check_values(self, data: np.ndarray, key: str) -> None:
        """Extra checks on the values."""

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Copy the map as float32 with the pixel size set."""
        path = ctx.abs(key)
        pixel = _check_map(path, ctx.params["angpix"], self.what)
        data, _ = read_mrc(path, permissive=True)
        data = np.asarray(data, dtype=np.float32)
        self.check_values(data, key)
        write_mrc(ctx.path(self.file_name), data, voxel_size_angstrom=pixel)
        return {"box": int(data.shape[0]), "angpix": pixel, "min": float(data.min()),
                "max": float(data.max())}

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``box 64, 3 Å/px``."""
        r = results[0][1]
        return f"{self.what} box {r['box']}, {r['angpix']:g} Å/px"


@register
class ImportVolume(_ImportMap):
    """Import a 3D map (a reference) as a Volume."""

    name = "import volume"
    description = _DESCRIPTION
    what = "volume"
    file_name = "volume.mrc"
    outputs = (Output("volume", NodeType.VOLUME, "volume.mrc"),)

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 import job options for its GUI."""
        return {"do_raw": "No", "do_other": "Yes", "node_type": "3D reference (.mrc)"}


@register
class ImportMask(_ImportMap):
    """Import a 3D mask (values in [0, 1]) as a Mask."""

    name = "import mask"
    description = _DESCRIPTION
    what = "mask"
    file_name = "mask.mrc"
    outputs = (Output("mask", NodeType.MASK, "mask.mrc"),)

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 import job options for its GUI."""
        return {"do_raw": "No", "do_other": "Yes", "node_type": "3D mask (.mrc)"}

    def check_values(self, data: np.ndarray, key: str) -> None:
        """A mask lies in [0, 1]."""
        lo, hi = float(data.min()), float(data.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise InputFileError(key, f"mask values span [{lo:g}, {hi:g}], not [0, 1]",
                                 "give a mask made by relion_mask_create or cryospa")
