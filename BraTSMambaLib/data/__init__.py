"""BraTS data layer: conventions, case I/O and validation, the synthetic phantom."""
