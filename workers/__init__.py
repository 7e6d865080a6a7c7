"""Running steps on dagster-celery workers: the Celery app workers start, the settings the
run side and the workers share, the lease that brings a lost worker's step back, and the
identity a step records about the worker that ran it."""
