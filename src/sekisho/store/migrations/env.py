"""Alembic environment of the regional stores. Run through ``sekisho.store.database.upgrade``,
which passes the connection (and, on PostgreSQL, the schema) in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from sekisho.store.schema import metadata

VERSION_TABLE = "sekisho_store_version"

connection = context.config.attributes["connection"]
schema = context.config.attributes.get("schema")
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    version_table_schema=schema,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
