"""maskstatus: mask-wearing status, gender and age group from face photos (18 classes, macro F1)."""

import os

# albumentations otherwise checks PyPI for updates on import; this tool must work offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
