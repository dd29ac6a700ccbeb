"""Alembic's environment for UICI's store. agent.incidents.storage.migrate hands it the
connection, already inside the one transaction (and lock) the whole upgrade runs in, so a
failed revision leaves the schema as it was, and two processes starting at once migrate once."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
