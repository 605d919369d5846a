"""The data layer: one Database wrapper, numbered migrations, one repository module per table."""

from toolcallstore.db.database import Database, Row, SyncTransaction, Transaction

__all__ = ["Database", "Row", "SyncTransaction", "Transaction"]
