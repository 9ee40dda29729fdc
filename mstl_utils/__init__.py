"""mstl_utils: the package behind the multi-stage transfer learning study.

Layers, bottom to top (a module imports only from layers below it):

1. ``config``, ``paths``, ``repro``, ``metrics``, ``statistics``, ``folds``, ``images``, ``batches``
                                                 settings, locations, provenance, metric and test maths, CV folds,
                                                 decoding one file, batches with on-device augmentation
2. ``decoded``, ``data``, ``synthetic``, ``manifest``, ``models``, ``audit``
                                                 the decoded-image cache, datasets and splits, the model registry
3. ``train``                                     the training loop (resumable), evaluation, atomic checkpoints
4. ``stages``, ``protocol``, ``search``,        run directories (one at a time or side by side), the CV protocol,
   ``chain``, ``benchmark``, ``explain``         the nested Optuna search, chains of any length, throughput
                                                 measurements, Grad-CAM maps of trained runs
5. ``analysis``, ``plots``, ``results``          statistics of the arms, figures, book tables (never import training)
6. ``study``                                     the papermill driver behind ``make study``
"""

__version__ = "0.2.0"
