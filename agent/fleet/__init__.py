"""Many backup proxies: each VM's task handed through Celery and Redis to ``vmkeep worker`` processes.

Nothing here is imported unless a job file says ``[executor] type = "celery"`` or ``vmkeep worker`` runs.
"""
