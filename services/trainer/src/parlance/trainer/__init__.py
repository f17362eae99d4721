"""parlance-train: training jobs on the users' feedback (a job, not a server)."""
