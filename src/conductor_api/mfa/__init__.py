"""The second factor: TOTP, recovery codes and pending sign-ins."""
