"""Benchmarks: ``python -m bench <case>`` runs module ``bench.<case>``'s ``main(argv)``."""
