"""Model layer: the model registry (build, reset the head, load weights) and transfer strategies.

Imports only ``mstl_utils.core``. The registry's API is re-exported here
(``from mstl_utils import models; models.build_model("mobilenet_v2", ...)``).
"""

from .registry import *  # noqa: F401,F403
