"""API keys and tenant quota overrides changed at run time (``genmedia tenants add-key --url``,
``revoke``, ``set-quota``; the admin routes of ``api/admin.py``). The tenants file stays the
bootstrap: these rows add keys to it, revoke keys of either, and override quota fields.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("revoked_at", sa.Double),
        sa.Column("description", sa.Text, nullable=False, server_default=sa.text("''")),
    )
    op.create_table(
        "tenant_quotas",
        sa.Column("tenant", sa.Text, primary_key=True),
        sa.Column("quotas", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tenant_quotas")
    op.drop_table("api_keys")
