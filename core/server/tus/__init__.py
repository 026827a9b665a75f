"""tus 1.0.0 under /files/: a second protocol front on the same ``UploadService``, state store and blob store."""
