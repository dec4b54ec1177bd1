"""Pure security primitives: passwords and tokens (no FastAPI, no database)."""
