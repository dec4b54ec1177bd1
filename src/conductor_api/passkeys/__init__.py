"""Passkeys (WebAuthn): registration, sign-in, the asset-links statement."""
