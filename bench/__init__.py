"""Benchmark scripts (each run as ``python bench/<name>.py``) and the private modules they share.

A package so that its shared modules (``bench._common``: results files, the environment block, the merge of
parts; ``bench._protocol``: the allocator benchmark's study protocol; ...) are private to bench/ and the
import lint (ruff's PLC2701) holds here as in the product's packages. No script imports another script.
"""
