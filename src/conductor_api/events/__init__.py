"""Security events, kept per user."""
