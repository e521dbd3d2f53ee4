"""The job runtime shared by every worker: records, executor, storage, media, callbacks, fetching."""
