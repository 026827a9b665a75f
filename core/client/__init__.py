"""The robot-side upload client behind ``core.network_manager``: journal, retries, transfer, events."""
