"""Long-form jobs: submit a book, poll it, fetch its audio; kept on disk, resumed after a restart.

``service.Jobs`` is what the API calls; ``runner.JobRunner`` works jobs in the background at batch priority,
in the slots other requests leave free (``budget.SlotBudget``); ``store.JobStore`` is the one interface to
where jobs are kept (``sqlite.SqliteJobStore`` for one router; a shared store for replicas, issue #18);
``files.JobFiles`` keeps their audio; ``finish`` joins it and sends the webhook.
"""
