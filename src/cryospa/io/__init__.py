"""cryospa.io: files in, numpy / pandas out. Knows files, not jobs; never imports ``core``.

* :mod:`~cryospa.io.mrc`: MRC / MRCS images, stacks, volumes; RELION image names.
* :mod:`~cryospa.io.star`: STAR files and RELION 3.1 tables with optics groups.
* :mod:`~cryospa.io.movies`: TIFF / MRC movies, gain references, detector defects.
* :mod:`~cryospa.io.coords`: particle coordinates (RELION STAR, EMAN box).

Every writer is atomic (temporary file in the same folder, then :func:`os.replace`); every
bad input raises :class:`cryospa.errors.InputFileError` naming the file, problem and fix.
"""

from cryospa.io._files import atomic_folder, check_new_folder
from cryospa.io.coords import read_coordinates, write_box, write_coordinates_star
from cryospa.io.movies import (
    MovieReader,
    apply_gain,
    correct_defects,
    open_movie,
    read_defects,
    read_gain,
    transform_gain,
    write_mrc_movie,
    write_tiff_movie,
)
from cryospa.io.mrc import (
    ImageStack,
    MrcHeaderInfo,
    format_image_name,
    parse_image_name,
    read_images,
    read_mrc,
    read_mrc_header,
    write_mrc,
)
from cryospa.io.star import (
    OPTICS_COLUMNS,
    RelionTable,
    joined,
    pixel_size_angstrom,
    read_relion_star,
    read_star,
    require_columns,
    split_optics,
    write_relion_star,
    write_star,
)

__all__ = [
    "OPTICS_COLUMNS",
    "ImageStack",
    "MovieReader",
    "MrcHeaderInfo",
    "RelionTable",
    "apply_gain",
    "atomic_folder",
    "check_new_folder",
    "correct_defects",
    "format_image_name",
    "joined",
    "open_movie",
    "parse_image_name",
    "pixel_size_angstrom",
    "read_coordinates",
    "read_defects",
    "read_gain",
    "read_images",
    "read_mrc",
    "read_mrc_header",
    "read_relion_star",
    "read_star",
    "require_columns",
    "split_optics",
    "transform_gain",
    "write_box",
    "write_coordinates_star",
    "write_mrc",
    "write_mrc_movie",
    "write_relion_star",
    "write_star",
    "write_tiff_movie",
]
