"""Experiments layer: the chapters (protocol, search, chain, explain, architectures, gan, pruning, benchmark), each with its plans, run, tables and verdict."""
