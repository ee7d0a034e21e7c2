"""Alembic environment: runs on the connection that ``dendrite.store.migrate`` passes in.

Run outside Dendrite (``alembic -c ... revision --autogenerate``), it connects
to ``DENDRITE_DATABASE_URL`` or the default database instead.
"""

from alembic import context

from dendrite.config import database_url
from dendrite.store.engine import WRITE, make_engine
from dendrite.store.schema import VERSION_TABLE, metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = make_engine(database_url())
    with engine.connect().execution_options(**WRITE) as conn:
        _run(conn)
    engine.dispose()
