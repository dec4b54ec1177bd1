"""`conductor-api serve`: a supervisor and its worker processes."""

# The status of a worker whose application did not start (uvicorn's own value): the
# supervisor stops rather than restarting it in a loop. Here, not in the worker's module:
# the supervisor must not import the application (and with it prometheus-client, which
# picks its file-backed values at import) before it has made the metrics directory.
STARTUP_FAILURE = 3
