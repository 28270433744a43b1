"""media: downloaded files (size, hashes, detected type, storage key, error), outbound files

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BIG = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('media', schema=None) as batch_op:
        batch_op.alter_column('media_id', existing_type=sa.Text(), nullable=True)
        batch_op.alter_column('wamid', existing_type=sa.Text(), nullable=True)
        batch_op.add_column(sa.Column('direction', sa.Text(), server_default='inbound', nullable=False))
        batch_op.add_column(sa.Column('detected_mime_type', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('declared_sha256', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('size', BIG, nullable=True))
        batch_op.add_column(sa.Column('storage_key', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('stored_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_media_storage_key'), ['storage_key'], unique=False)
        batch_op.create_index('ix_media_status_created', ['status', 'created_at'], unique=False)
    # Until now `sha256` held Meta's value as the webhook gave it; it now holds the hex SHA-256 of the
    # stored bytes, and Meta's moves to `declared_sha256`. No row was stored before this revision.
    op.execute("UPDATE media SET declared_sha256 = sha256, sha256 = NULL, updated_at = created_at")

    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('media_file_id', BIG, nullable=True))
        batch_op.add_column(sa.Column('media_id', sa.Text(), nullable=True))
        batch_op.create_foreign_key('fk_outbound_messages_media_file_id_media', 'media', ['media_file_id'], ['id'])


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('outbound_messages', schema=None) as batch_op:
        batch_op.drop_constraint('fk_outbound_messages_media_file_id_media', type_='foreignkey')
        batch_op.drop_column('media_id')
        batch_op.drop_column('media_file_id')

    # Outbound files have no Meta id nor wamid: they cannot stay once those are required again.
    op.execute("DELETE FROM media WHERE direction = 'outbound'")
    op.execute("UPDATE media SET sha256 = declared_sha256")
    with op.batch_alter_table('media', schema=None) as batch_op:
        batch_op.drop_index('ix_media_status_created')
        batch_op.drop_index(batch_op.f('ix_media_storage_key'))
        for column in ('deleted_at', 'stored_at', 'updated_at', 'error', 'storage_key', 'size', 'declared_sha256',
                       'detected_mime_type', 'direction'):
            batch_op.drop_column(column)
        batch_op.alter_column('wamid', existing_type=sa.Text(), nullable=False)
        batch_op.alter_column('media_id', existing_type=sa.Text(), nullable=False)
