"""Mamba layers: `Mamba` (mamba_ssm's), `TriOrientedMamba` (SegMamba's v3), `SS3D` (3D cross-scan)."""
