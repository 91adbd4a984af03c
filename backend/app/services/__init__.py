"""Business logic behind the routes: decoding uploads and running the model."""
