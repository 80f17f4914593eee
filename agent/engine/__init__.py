"""The engine that joins a backup source to a repository: backup and restore."""
