"""Regional store: marker, records, subject index, tenant keys.

Revision ID: 0001
Revises:
Create Date: 2025-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_marker",
        sa.Column("role", sa.String(16), primary_key=True),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "records",
        sa.Column("record_id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("key_generation", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("level", sa.SmallInteger, nullable=False),
        sa.Column("endpoint_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("prompt_hash", sa.String(80), nullable=False),
        sa.Column("output_hash", sa.String(80), nullable=True),
        sa.Column("prompt", sa.LargeBinary, nullable=True),
        sa.Column("output", sa.LargeBinary, nullable=True),
        sa.Column("pseudonym_map", sa.LargeBinary, nullable=True),
        sa.Column("restricted_at", sa.BigInteger, nullable=True),
        sa.Column("restricted_by", sa.String(256), nullable=True),
    )
    op.create_index("ix_records_tenant_expires", "records", ["tenant", "expires_at"])
    op.create_index("ix_records_request", "records", ["request_id"])
    op.create_table(
        "subject_index",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("record_id", sa.String(40), primary_key=True),
        sa.Column("id_type", sa.String(64), nullable=False),
    )
    op.create_index("ix_subject_index_record", "subject_index", ["record_id"])
    op.create_table(
        "tenant_keys",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("wrapped", sa.Text, nullable=True),
        sa.Column("kek_version", sa.Integer, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("rewrapped_at", sa.BigInteger, nullable=True),
        sa.Column("destroyed_at", sa.BigInteger, nullable=True),
        sa.Column("destroyed_by", sa.String(256), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("tenant_keys")
    op.drop_index("ix_subject_index_record", "subject_index")
    op.drop_table("subject_index")
    op.drop_index("ix_records_request", "records")
    op.drop_index("ix_records_tenant_expires", "records")
    op.drop_table("records")
    op.drop_table("store_marker")
