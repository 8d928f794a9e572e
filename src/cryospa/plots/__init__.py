"""Pictures of results (matplotlib, no display needed), one module per kind of result.

``fsc`` (FSC curves); every module saves through :func:`cryospa.plots._figure.save_figure`
(atomic write). Import the module you need: ``from cryospa.plots.fsc import plot_fsc``.
"""

from cryospa.plots.fsc import plot_fsc

__all__ = ["plot_fsc"]
