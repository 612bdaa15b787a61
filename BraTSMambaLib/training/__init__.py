"""nnU-Net v2 integration: conversion (`convert`), planning (`planning`), trainers (`trainers`),
runs (`run`), run status (`status`), the comparison table (`compare`) and data bundles (`bundle`).

Importing this package imports nothing heavy; nnU-Net is imported by the modules that use it.
"""
