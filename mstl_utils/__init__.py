"""mstl_utils: the package behind the multi-stage transfer learning study.

Layers, bottom to top (a module imports only from layers below it):

1. ``config``, ``paths``, ``repro``, ``metrics``, ``statistics``, ``folds``  settings, locations, provenance, metric and test maths, CV folds
2. ``data``, ``synthetic``, ``models``           datasets, splits, loaders; the model registry
3. ``train``                                     the training loop, evaluation, atomic checkpoints
4. ``stages``                                    one transfer stage as a run directory
5. ``plots``, ``results``                        figures and book tables (never import training)
6. ``study``                                     the papermill driver behind ``make study``
"""

__version__ = "0.2.0"
