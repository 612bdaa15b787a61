"""BraTSMamba: brain-tumour segmentation (WT/TC/ET) with Mamba state-space networks.

Pure Python: importable without Slicer and without Qt. Heavy modules (torch, nnU-Net) are
imported by the subpackages that need them, never at package import time.
"""
__version__ = "0.1.0"
