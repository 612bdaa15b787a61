"""Helpers of the BraTSMamba Slicer module, importable without Qt: the combo-box choices and what they
mean for the CLI (`choices`), and the first-use dependency installation (`dependencies`, which calls
into Slicer only when installing).

MRML logic that runs without Slicer's application lives in `BraTSMambaLib.mrml`.
"""
