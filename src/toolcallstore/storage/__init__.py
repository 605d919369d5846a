"""Where generated assets live: a Storage Protocol with local-disk and S3-compatible backends."""
