"""Device sessions and refresh-token rotation."""
