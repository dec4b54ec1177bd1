"""Login, refresh, lockout and the current-user dependency."""
