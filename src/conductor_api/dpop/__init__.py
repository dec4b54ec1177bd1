"""DPoP (RFC 9449): proofs checked per request, their replay cache, and server nonces."""
