"""The job file: sources, repositories and jobs, read with tomllib and validated as a whole."""
