"""CLI sub-commands; thin argument parsing over the library (see `BraTSMambaLib.cli`)."""
