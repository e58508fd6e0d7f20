"""Import a CVAT-for-images XML file with datumaro's CVAT importer and print what datumaro sees, as one JSON line.

Run by the python of a separate datumaro venv (`.ci/datumaro_venv.sh`; datumaro pins opencv<5 / pillow<13,
which conflict with the project's venv), so this script imports nothing from bloodsmear:

    .venv-datumaro/bin/python tools/datumaro_check.py annotations.xml IMAGES_DIR

datumaro (1.x) looks each ``<image name=...>`` up as ``<folder of the XML>/images/<name>`` and refuses the
dataset when an image is missing, so the images folder is needed: the XML and the folder are linked into
a temporary folder in that layout. IMAGES_DIR defaults to ``<folder of the XML>/images``.

Output: {"datumaro": version, "items": n, "item": {id: {"polygons": n, "labels": {label: count},
"shapes": [[type, label, [x1, y1, x2, y2]], ...]}}} with item ids as datumaro makes them (the image name
without its extension) and each shape's bounding box.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path


def describe(xml: Path, images: Path) -> dict:
    import datumaro as dm  # only in the datumaro venv
    from datumaro.components.annotation import AnnotationType

    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(xml.resolve(), Path(tmp) / "annotations.xml")
        os.symlink(images.resolve(), Path(tmp) / "images", target_is_directory=True)
        ds = dm.Dataset.import_from(tmp, "cvat")
        labels = ds.categories()[AnnotationType.label]
        items = {}
        for it in ds:
            shapes = []
            for a in it.annotations:
                name = labels[a.label].name if a.label is not None else None
                x, y, w, h = a.get_bbox()
                shapes.append([a.type.name, name, [round(v, 2) for v in (x, y, x + w, y + h)]])
            polys = [s for s in shapes if s[0] == "polygon"]
            items[it.id] = {"polygons": len(polys), "labels": dict(Counter(s[1] for s in polys)), "shapes": shapes}
    return {"datumaro": dm.__version__, "items": len(items), "item": items}


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        sys.stderr.write("usage: datumaro_check.py ANNOTATIONS.xml [IMAGES_DIR]\n")
        return 2
    xml = Path(argv[0])
    images = Path(argv[1]) if len(argv) == 2 else xml.parent / "images"
    for p, what in ((xml, "file"), (images, "folder")):
        if not (p.is_file() if what == "file" else p.is_dir()):
            sys.stderr.write(f"{p}: no such {what}\n")
            return 2
    sys.stdout.write(json.dumps(describe(xml, images), sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
