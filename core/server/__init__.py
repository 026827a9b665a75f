"""The upload server: HTTP layer, upload service, state and blob stores, background jobs."""
