"""The inference API: FastAPI app factory, routes, settings and services."""
