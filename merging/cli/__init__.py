"""The `mergescope` command line: option types, the shared model wiring, the commands."""
