"""The declarative base every table is declared on (one metadata for the whole schema)."""

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass
