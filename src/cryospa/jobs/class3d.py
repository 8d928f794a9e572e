"""``cryospa class3d``: multi-reference 3D classification (RELION's ``relion_refine`` 3D).

``--classes`` K references all start from ``--reference`` low-passed to ``--ini-high`` Å
(scaled to the particles unless ``--absolute-greyscale``); in the first iteration every
particle is aligned against one randomly chosen class, which breaks the symmetry between the
classes (RELION's random initial assignment). Each iteration then marginalises every particle
over class, orientation (HEALPix order ``--healpix-order``, global; or local around its
current orientation with ``--local-searches`` degrees of prior width) and translation, and
re-estimates the class maps (regularised with ``--tau2-fudge``, 4 as RELION's GUI), their
fractions and resolutions, the noise spectra and the offset prior, for ``--iterations``
iterations.

Outputs, as RELION's ``Class3D/jobNNN/``: per iteration ``run_itNNN_classNNN.mrc``,
``run_itNNN_data.star`` (class, angles, origins, ``rlnMaxValueProbDistribution``),
``run_itNNN_model.star`` (class distribution and resolution) and the engine checkpoint; at the
end ``run_data.star``, ``run_model.star``, ``run_classNNN.mrc``, per-class angular
distributions (``run_classNNN_angdist.png``) and central slices of every class
(``run_slices.png``). A killed job continues from its last complete iteration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryospa.engine.em3d import Refine3DOptions
from cryospa.jobs.refine3d import ML3DJob, _options, common_params
from cryospa.project.nodes import NodeType
from cryospa.project.schema import Input, JobContext, Output, Param, register

__all__ = ["Class3D"]


@register
class Class3D(ML3DJob):
    """Multi-reference 3D classification (RELION's relion_refine 3D, K classes)."""

    name = "class3d"
    folder = "Class3D"
    relion_type = 9  # PROC_3DCLASS
    description = __doc__ or ""
    gold_standard = False
    inputs = (
        Input("particles", (NodeType.PARTICLES,), help="particles to classify",
              relion="fn_img"),
        Input("reference", (NodeType.VOLUME,), help="initial map (same box and pixel size as "
              "the particles; cryospa resize)", relion="fn_ref"),
    )
    params = (
        Param("classes", int, 4, range=(1, 1000), relion="nr_classes",
              help="number of classes K"),
        Param("iterations", int, 25, range=(1, 1000), relion="nr_iter",
              help="EM iterations (RELION's default 25)"),
        Param("local_searches", float, 0.0, unit="°", range=(0, 180), relion="sigma_angles",
              help="search orientations locally around each particle's current one with a "
              "Gaussian prior of this width (needs angles in the particles); 0: global search"),
        *common_params(
            tau2=4.0, ini_high=50.0,
            order_help="HEALPix order of the coarse search: 2 = 15° coarse, 7.5° fine "
            "(RELION's GUI \"7.5 degrees\")"),
    )
    outputs = (
        Output("particles", NodeType.PARTICLES, "run_data.star"),
        Output("map", NodeType.VOLUME, "run_class001.mrc"),
    )
    citations = (
        "Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",
        "Scheres (2016) Methods Enzymol. 579:125-157 (3D classification)",
    )

    def options(self, params: Mapping[str, Any]) -> Refine3DOptions:
        """Engine options."""
        return _options(params, n_classes=int(params["classes"]), gold=False, auto=False,
                        max_iterations=int(params["iterations"]),
                        local_sigma_degrees=float(params["local_searches"]))

    def n_iterations(self, ctx: JobContext) -> int:
        """``--iterations``."""
        return int(ctx.params["iterations"])

    def _describe(self, it: int, model: Any, info: Mapping[str, Any]) -> str:
        return (f"iteration {it}: {_classes(info)}; <Pmax> {info['average_pmax']:.3f}, "
                f"orientation change {info['angle_change_degrees']:.2f}°")

    def summary(self, ctx: JobContext, last_iteration: int, info: Mapping[str, Any]) -> str:
        """``4 classes, 25 iterations: #1 61.2 % 6.3 Å, ...``."""
        n = len(info.get("class_fractions") or [])
        return f"{n} classes, {last_iteration} iterations: {_classes(info)}"


def _classes(info: Mapping[str, Any]) -> str:
    """``#1 61.2 % 6.3 Å, #2 ...`` from an iteration's figures."""
    fr = list(info.get("class_fractions") or [])
    res = list(info.get("resolution_angstrom") or [])
    return ", ".join(f"#{k + 1} {100 * f:.1f} % {r:.1f} Å"
                     for k, (f, r) in enumerate(zip(fr, res, strict=False)))
