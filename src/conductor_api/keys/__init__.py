"""Signing keys: the database's key set, its rotation, and the JWKS that publishes it."""
