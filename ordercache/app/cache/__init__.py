"""The cache service: typed cache-aside over Redis with version-guarded fills."""
