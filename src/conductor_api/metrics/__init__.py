"""Prometheus metrics: what is counted (`service`), per request (`middleware`), served
(`exposition`)."""
