"""Client library and danet-client CLI tests (against danet-serve in a subprocess)."""
