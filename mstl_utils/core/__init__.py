"""Core layer: settings as frozen profiles, locations (data, weights, runs), seeds, checksums, provenance. Imports nothing of the package."""
