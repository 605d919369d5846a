"""The data layer: one Database wrapper, numbered migrations, one repository module per table."""

from toolcallstore.db.database import Database, Row, Transaction

__all__ = ["Database", "Row", "Transaction"]
