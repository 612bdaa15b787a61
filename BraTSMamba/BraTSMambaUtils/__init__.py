"""Helpers of the BraTSMamba Slicer module that need Slicer (dependency set-up, sample data).

MRML logic that runs without Slicer's application lives in `BraTSMambaLib.mrml`.
"""
