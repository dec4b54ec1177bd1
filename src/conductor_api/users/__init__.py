"""Users: accounts, their passwords and their status."""
