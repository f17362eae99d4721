"""Mark the assistant messages the gateway generated, and keep feedback text's verdicts.

The training export takes its targets only from answers the model wrote: an "assistant"
message a client wrote itself is stored like any other, so the gateway now marks its own
(messages.generated). Feedback text (a comment, a corrected answer) is classified when it is
submitted and its verdict kept beside it (feedback.moderation_json), so that a flagged
correction is never exported as a chosen answer. Rows from before are unmarked: they export
nothing until rated again.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on both backends (SQLite takes one with a constant default), so the
    # messages table, its search triggers and indexes stay as they are.
    op.add_column(
        "messages",
        sa.Column("generated", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "feedback", sa.Column("moderation_json", sa.Text(), nullable=False, server_default="")
    )


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("moderation_json")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("generated")
