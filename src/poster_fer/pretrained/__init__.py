"""Package data only: shipped weights and the bundled YuNet detector, found by path (no code, nothing to import)."""
