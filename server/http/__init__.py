"""REST adapter (FastAPI): ``create_app(settings, engine)`` in ``server.http.app``."""
