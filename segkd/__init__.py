"""The `segkd` command: one front for the three stages (see :mod:`segkd.cli`)."""
