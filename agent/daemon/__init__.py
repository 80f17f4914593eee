"""The vmkeep agent: runs the job file's jobs at their times, records what it did, reports it."""
