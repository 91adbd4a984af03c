"""Settings, logging, metrics and middleware shared by the whole app."""
