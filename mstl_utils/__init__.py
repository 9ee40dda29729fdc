"""mstl_utils: the package behind the multi-stage transfer learning study.

One line per layer, bottom to top; a module imports only from its own layer and the ones
below it (``tests/test_layers.py`` enforces it):

``core/``         settings (frozen profiles), locations (data, weights, runs), seeds, checksums, provenance
``data/``         datasets and their splits, the decoded-image cache, batches, folds, the audit, generated images
``models/``       the model registry (build, reset the head, load ImageNet weights), transfer strategies, pruning masks
``report/``       metrics, statistics, the arms' analysis, result tables and figures (never imports training)
``engine/``       the run spec, the one run lifecycle (resume, reuse, locks), the training loop, executors
``experiments/``  the chapters: protocol, search, chain, explain, architectures, gan, pruning, benchmark
``study``         the papermill driver behind ``make study`` (runs notebooks; trains nothing itself)

A new chapter is a module in ``experiments/`` with the chapter contract (plans per profile, a run
function, its tables, its glue values and its verdict) and a notebook in ``notebooks/`` that calls it.
"""

__version__ = "0.3.0"
