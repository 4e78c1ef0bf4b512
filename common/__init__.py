"""Names shared by export, server, clients and tests (no heavy imports here)."""
