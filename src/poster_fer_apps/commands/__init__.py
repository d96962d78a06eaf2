"""Subcommands of the ``poster-fer`` CLI, one module each (see :mod:`poster_fer_apps.cli`)."""
