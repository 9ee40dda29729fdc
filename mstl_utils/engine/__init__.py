"""Engine layer: the run spec, the one run lifecycle (reuse, resume, locks, provenance), the training loop, executors (local, Ray)."""
