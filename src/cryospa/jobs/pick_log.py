"""``cryospa pick log``: reference-free Laplacian-of-Gaussian picking, as RELION's LoG picker.

Per micrograph (one item each): the micrograph is normalised, down-sampled to a working pixel
size of half ``--max-res``, filtered with Laplacian-of-Gaussian filters for blobs from a fifth of
``--diam-min`` to five times ``--diam-max``; pixels whose best blob size lies between the two
diameters are candidates, and peaks at least ``--threshold`` standard deviations above their mean
response (and below ``--upper-threshold``, which rejects contamination) are picked, best first,
each keeping the others a particle diameter away (``(detected + minimum diameter) / 2`` as
RELION, or ``--min-distance``), none within half the minimum diameter of an edge (see
:mod:`cryospa.core.picking`). Particles are dark unless ``--white``.

Outputs, laid out as RELION's autopicking writes them:

* per micrograph ``<job>/<micrograph path>_autopick.star`` (``rlnCoordinateX/Y`` in pixels,
  ``rlnAutopickFigureOfMerit`` = the LoG response in standard deviations above the mean,
  ``rlnClassNumber`` 0, ``rlnAnglePsi`` 0), where the micrograph path is taken after its
  ``.../jobNNN/`` folder as RELION does, so ``relion_preprocess --coord_dir <job>/
  --coord_suffix _autopick.star`` finds them; an empty table when nothing is found;
* ``coordinates.star``: micrograph -> coordinate file (``data_coordinate_files``,
  ``rlnMicrographName``, ``rlnMicrographCoordinates``, as RELION 4 writes it) and RELION 3.1's
  ``coords_suffix_autopick.star`` (the name of the input micrographs STAR file);
* ``summary.star`` (per micrograph: picks, mean figure of merit) and
  ``picks_per_micrograph.png``; for the first ``--plots`` micrographs a picture
  ``..._autopick.png``: the down-sampled (low-passed) micrograph with a circle of the detected
  diameter at each pick.

An unreadable micrograph is a failed item (logged and counted; the others finish; fix it and
``cryospa continue``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cryospa.errors import InputFileError, ParameterError
from cryospa.io._files import write_text_atomic
from cryospa.io.coords import write_coordinates_star
from cryospa.io.mrc import read_mrc
from cryospa.io.star import pixel_size_angstrom, write_star
from cryospa.jobs._coords import PICK_PLOTS_PARAM, coordinate_file_name
from cryospa.jobs._sets import item_info, list_cached, read_input_set
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

__all__ = ["PickLog"]

_DESCRIPTION = __doc__ or ""

#: Suffix of the per-micrograph coordinate files (RELION's ``--pickname autopick``).
SUFFIX = "_autopick.star"

def _micrographs(ctx: JobContext) -> dict[str, tuple[int, float]]:
    """Micrograph name -> (index in the input set, pixel size in Å); {} before the set exists."""
    table = read_input_set(ctx, "micrographs", "micrographs",
                           "give the output of import micrographs, motioncorr or ctffind")
    if table is None:
        return {}
    groups = (table.data["rlnOpticsGroup"].astype(int) if "rlnOpticsGroup" in table.data
              else pd.Series(1, index=table.data.index))
    sizes = {g: pixel_size_angstrom(table, g) for g in sorted(set(groups))}
    return {str(name): (i, sizes[g])
            for i, (name, g) in enumerate(zip(table.data["rlnMicrographName"], groups,
                                              strict=True))}


@register
class PickLog(PerItemJob):
    """Laplacian-of-Gaussian picking (see the module docstring)."""

    name = "pick log"
    folder = "AutoPick"
    relion_type = 4  # PROC_AUTOPICK
    description = _DESCRIPTION
    inputs = (
        Input("micrographs", (NodeType.MICROGRAPHS,),
              help="micrographs to pick (from import micrographs, motioncorr or ctffind)",
              relion="fn_input_autopick"),
    )
    params = (
        Param("diam_min", float, 150.0, unit="Å", range=(0, None), open_min=True,
              help="smallest particle diameter (the tutorial's beta-galactosidase: 150)",
              relion="log_diam_min"),
        Param("diam_max", float, 180.0, unit="Å", range=(0, None), open_min=True,
              help="largest particle diameter (the tutorial's beta-galactosidase: 180)",
              relion="log_diam_max"),
        Param("white", bool, False, help="the particles are white (brighter than the "
              "background), not dark", relion="log_invert"),
        Param("max_res", float, 20.0, unit="Å", range=(0, None), open_min=True,
              help="maximum resolution used: the micrograph is down-sampled to half of it per "
              "pixel", relion="log_maxres"),
        Param("threshold", float, 0.0, unit="standard deviations", metavar="SD",
              help="picking threshold above the mean LoG response: higher for fewer picks, "
              "negative for more", relion="log_adjust_thr"),
        Param("upper_threshold", float, 5.0, unit="standard deviations", metavar="SD",
              help="peaks this far above the mean response or more are not picked (ice "
              "contamination, carbon edges); RELION's default 999 keeps them",
              relion="log_upper_thr"),
        Param("min_distance", float, 0.0, unit="Å", range=(0, None),
              help="minimum distance between picks; 0: as RELION, half the sum of the "
              "detected and the minimum diameter"),
        PICK_PLOTS_PARAM,
        DEVICE_PARAM,
    )
    outputs = (Output("coordinates", NodeType.COORDINATES, "coordinates.star"),)
    citations = (
        "Zivanov et al. (2018) eLife 7:e42166 (RELION-3; Laplacian-of-Gaussian picking)",
        "Scheres (2015) J. Struct. Biol. 189:114-122 (RELION autopicking)",
    )

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 autopick job options for its GUI (LoG picking, no references)."""
        return {"do_log": "Yes", "do_refs": "No", "do_ref3d": "No", "shrink": "0",
                "lowpass": f"{params['max_res']:g}"}

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """The diameters must be in order; the device must exist."""
        from cryospa.compute.device import resolve_device

        if params["diam_max"] < params["diam_min"]:
            raise ParameterError(
                f"pick log: --diam-max {params['diam_max']:g} Å is smaller than --diam-min "
                f"{params['diam_min']:g} Å: swap them"
            )
        resolve_device(params["device"])

    def list_items(self, ctx: JobContext) -> list[str]:
        """The micrographs of the input set (re-read at every poll when streaming)."""
        return list_cached(ctx, _micrographs)

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Pick one micrograph; write its coordinate file (and picture)."""
        import torch

        from cryospa.compute.device import resolve_device
        from cryospa.core.picking import pick_log

        index, angpix = item_info(ctx, key, _micrographs)
        data, _ = read_mrc(ctx.abs(key))
        if data.ndim == 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 2:
            raise InputFileError(key, f"a micrograph must be one 2D image, found shape "
                                 f"{data.shape}", "pick summed micrographs, not movies")
        if not np.isfinite(data).all():
            raise InputFileError(key, "the micrograph has NaN or infinite pixels",
                                 "re-create it (motion correction) or leave it out (subset)")
        p = ctx.params
        device = resolve_device(p["device"])
        picks = pick_log(
            torch.from_numpy(data).to(device),
            pixel_size_angstrom=angpix,
            min_diameter_angstrom=float(p["diam_min"]),
            max_diameter_angstrom=float(p["diam_max"]),
            max_resolution_angstrom=float(p["max_res"]),
            white=bool(p["white"]),
            adjust_threshold=float(p["threshold"]),
            upper_threshold=float(p["upper_threshold"]),
            min_distance_angstrom=float(p["min_distance"]) or None,
        )
        xy = picks.xy.cpu().numpy()
        fom = picks.fom.cpu().numpy()
        n = len(fom)
        table = pd.DataFrame({
            "rlnCoordinateX": xy[:, 0],
            "rlnCoordinateY": xy[:, 1],
            "rlnAutopickFigureOfMerit": fom,
            "rlnClassNumber": np.zeros(n, dtype=np.int64),
            "rlnAnglePsi": np.zeros(n),
        })
        rel = coordinate_file_name(key, SUFFIX)
        out = ctx.path(*PurePosixPath(rel).parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_coordinates_star(out, table)
        plot = None
        if p["plots"] < 0 or index < p["plots"]:
            from cryospa.plots.picking import plot_picks

            h, w = data.shape
            hw, ww = picks.image.shape
            png = out.with_name(out.name[: -len(".star")] + ".png")
            shown = picks.image if p["white"] else -picks.image  # the micrograph's contrast
            plot_picks(
                png, shown.cpu().numpy(), xy, picks.diameter_angstrom.cpu().numpy() / angpix,
                scale=(w / ww, h / hw),
                title=f"{key}: {n} picks (LoG {p['diam_min']:g}-{p['diam_max']:g} Å, "
                f"threshold {p['threshold']:g}, {picks.n_too_high} above upper threshold)",
            )
            plot = ctx.rel(*PurePosixPath(rel).with_suffix(".png").parts)
        return {
            "micrograph": key,
            "coordinates": ctx.rel(*PurePosixPath(rel).parts),
            "n": n,
            "fom_mean": float(fom.mean()) if n else 0.0,
            "too_high": picks.n_too_high,
            "plot": plot,
        }

    def finalize(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> None:
        """Write ``coordinates.star``, ``coords_suffix_autopick.star``, the summary and plot."""
        order = ctx.scratch.get("micrographs") or {}
        results = sorted(results, key=lambda kr: order.get(kr[0], (len(order), 0.0))[0])
        names = [r["micrograph"] for _, r in results]
        counts = [int(r["n"]) for _, r in results]
        write_star(ctx.path("coordinates.star"), {"coordinate_files": pd.DataFrame({
            "rlnMicrographName": names,
            "rlnMicrographCoordinates": [r["coordinates"] for _, r in results],
        })})
        write_text_atomic(ctx.path("coords_suffix" + SUFFIX), ctx.input("micrographs").path + "\n")
        write_star(ctx.path("summary.star"), {"": pd.DataFrame({
            "rlnMicrographName": names,
            "rlnAutopickFigureOfMerit": [float(r["fom_mean"]) for _, r in results],
            "rlnGroupNrParticles": pd.Series(counts, dtype="int64"),
        })})
        from cryospa.plots.picking import plot_picks_per_micrograph

        plot_picks_per_micrograph(ctx.path("picks_per_micrograph.png"), counts)

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``1234 picks on 12 micrographs (mean 102.8, 87 to 120 per micrograph)``."""
        counts = [int(r["n"]) for _, r in results]
        if not counts:
            return "no micrographs"
        return (f"{sum(counts)} picks on {len(counts)} micrographs (mean "
                f"{sum(counts) / len(counts):.1f}, {min(counts)} to {max(counts)} per "
                "micrograph)")
