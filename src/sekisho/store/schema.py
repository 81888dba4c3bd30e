"""The tables of a regional store. Changed only through migrations (``migrations/versions``).

Every database holds a ``store_marker`` row naming the region (and the role: ``records`` for
the records, ``keyring`` for the wrapped data keys). Records and keyring live in different
databases on purpose: a copy of the records database holds no key, so destroying a tenant's
data key (crypto-shredding) makes its records unreadable even in old copies of the records.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData()

store_marker = Table(
    "store_marker",
    metadata,
    Column("role", String(16), primary_key=True),
    Column("region", String(64), nullable=False),
    Column("country", String(2), nullable=False),
    Column("created_at", BigInteger, nullable=False),  # ms since the epoch, UTC
)

records = Table(
    "records",
    metadata,
    Column("record_id", String(40), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("key_generation", Integer, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("mode", String(16), nullable=False),  # full | metadata
    Column("level", SmallInteger, nullable=False),
    Column("endpoint_id", String(128), nullable=False),
    Column("model", String(256), nullable=False),
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("prompt_hash", String(80), nullable=False),
    Column("output_hash", String(80), nullable=True),
    Column("prompt", LargeBinary, nullable=True),  # AES-256-GCM, full mode only
    Column("output", LargeBinary, nullable=True),
    Column("pseudonym_map", LargeBinary, nullable=True),
    Column("restricted_at", BigInteger, nullable=True),  # 利用停止: excluded from export and use
    Column("restricted_by", String(256), nullable=True),
    Index("ix_records_tenant_expires", "tenant", "expires_at"),
    Index("ix_records_request", "request_id"),
)

subject_index = Table(
    "subject_index",
    metadata,
    Column("tenant", String(128), primary_key=True),
    Column("id_hash", String(64), primary_key=True),  # HMAC of type + normalised value
    Column("record_id", String(40), primary_key=True),
    Column("id_type", String(64), nullable=False),
    Index("ix_subject_index_record", "record_id"),
)

tenant_keys = Table(
    "tenant_keys",
    metadata,
    Column("tenant", String(128), primary_key=True),
    Column("generation", Integer, primary_key=True),
    Column("wrapped", Text, nullable=True),  # NULL once destroyed
    Column("kek_version", Integer, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("rewrapped_at", BigInteger, nullable=True),
    Column("destroyed_at", BigInteger, nullable=True),
    Column("destroyed_by", String(256), nullable=True),
)
