"""`conductor-api serve`: a supervisor and its worker processes."""
