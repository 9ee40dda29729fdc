"""mstl_utils: the package behind the multi-stage transfer learning study.

Layers, bottom to top (an upper layer may import a lower one, never the reverse):

1. ``config``, ``paths``, ``repro``      settings, where things live, seeds and provenance
2. ``data``, ``synthetic``, ``models``    datasets, splits, loaders; the model registry
3. ``train``                              the training loop, evaluation and checkpoints
4. ``stages``                             one transfer stage as a run directory
5. ``metrics``, ``plots``, ``results``    numbers, figures and book tables (never import training)
6. ``study``                              the papermill driver behind ``make study``
"""

__version__ = "0.1.0"
