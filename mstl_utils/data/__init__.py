"""Data layer: datasets and their splits, the decoded-image cache, folds, the audit, generated images.

Imports only ``mstl_utils.core``. The dataset API of ``datasets`` is re-exported here
(``from mstl_utils import data; data.locate("head_ct")``).
"""

from .datasets import *  # noqa: F401,F403
from .datasets import DataFormatError, DataNotFoundError  # noqa: F401  (explicit for readers)
