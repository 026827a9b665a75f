"""Shared test helpers: real servers on free 127.0.0.1 ports, stopped by PID."""
