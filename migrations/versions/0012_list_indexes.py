"""indexes for the dataset and study lists: newest first on (created_at, id) per tenant, by status or format
(datasets) and kind (studies), and across tenants for admin keys

A keyset page (``core.db.paging``) is a range of one of these indexes. The single-column ``ix_datasets_tenant`` is
the first column of ``ix_datasets_tenant_created`` and goes; ``ix_studies_tenant_created`` gains ``id``, the
cursor's tie-break.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

DATASET_INDEXES = {
    "ix_datasets_tenant_created": ["tenant", "created_at", "id"],
    "ix_datasets_tenant_status_created": ["tenant", "status", "created_at", "id"],
    "ix_datasets_tenant_format_created": ["tenant", "format", "created_at", "id"],
    "ix_datasets_created": ["created_at", "id"],
}
STUDY_INDEXES = {
    "ix_studies_tenant_kind_created": ["tenant", "kind", "created_at", "id"],
    "ix_studies_created": ["created_at", "id"],
}


def upgrade() -> None:
    op.drop_index("ix_datasets_tenant", table_name="datasets")
    for name, columns in DATASET_INDEXES.items():
        op.create_index(name, "datasets", columns)
    op.drop_index("ix_studies_tenant_created", table_name="studies")
    op.create_index("ix_studies_tenant_created", "studies", ["tenant", "created_at", "id"])
    for name, columns in STUDY_INDEXES.items():
        op.create_index(name, "studies", columns)


def downgrade() -> None:
    for name in STUDY_INDEXES:
        op.drop_index(name, table_name="studies")
    op.drop_index("ix_studies_tenant_created", table_name="studies")
    op.create_index("ix_studies_tenant_created", "studies", ["tenant", "created_at"])
    for name in DATASET_INDEXES:
        op.drop_index(name, table_name="datasets")
    op.create_index("ix_datasets_tenant", "datasets", ["tenant"])
