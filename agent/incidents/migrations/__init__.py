"""The store's schema history (Alembic revisions), run by agent.incidents.storage.migrate."""
