"""Device tokens: a lockout that cannot be turned against the owner."""
