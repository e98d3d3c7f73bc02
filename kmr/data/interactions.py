"""The in-memory interactions table every training step reads: dense ids, one row a positive.

Example:
    >>> import numpy as np
    >>> from kmr.vocabulary import Vocabulary
    >>> data = Interactions(
    ...     users=np.array([0, 0, 1]), items=np.array([1, 0, 1]), timestamps=None,
    ...     user_vocab=Vocabulary(["u1", "u2"]), item_vocab=Vocabulary([10, 20]),
    ... )
    >>> len(data), data.num_users, data.num_items
    (3, 2, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kmr.vocabulary import Vocabulary


@dataclass(frozen=True)
class Interactions:
    """Implicit positives: row ``j`` says user ``users[j]`` liked item ``items[j]``.

    Each (user, item) pair appears at most once. ``timestamps`` (float64, one per row)
    is None when the source had no time column.

    Attributes:
        users: int64 dense user indices into ``user_vocab``.
        items: int64 dense item indices into ``item_vocab``.
        timestamps: float64 per row, or None.
        user_vocab: raw user id of each dense index.
        item_vocab: raw item id of each dense index.
        source: where the rows came from (a path or ``"synthetic(...)"``), for messages.
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    source: str = "<memory>"

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", np.asarray(self.users, dtype=np.int64))
        object.__setattr__(self, "items", np.asarray(self.items, dtype=np.int64))
        if self.timestamps is not None:
            object.__setattr__(self, "timestamps", np.asarray(self.timestamps, np.float64))
        if not (len(self.users) == len(self.items)) or (
            self.timestamps is not None and len(self.timestamps) != len(self.users)
        ):
            raise ValueError(
                "users, items and timestamps must have the same length. Received: "
                f"{len(self.users)}, {len(self.items)}, "
                f"{None if self.timestamps is None else len(self.timestamps)}"
            )

    def __len__(self) -> int:
        return len(self.users)

    @property
    def num_users(self) -> int:
        """Size of the user vocabulary (the user table's rows)."""
        return len(self.user_vocab)

    @property
    def num_items(self) -> int:
        """Size of the item vocabulary (the item table's rows)."""
        return len(self.item_vocab)

    def subset(self, mask: np.ndarray) -> Interactions:
        """Returns the rows where ``mask`` is True, with the same vocabularies."""
        return Interactions(
            users=self.users[mask],
            items=self.items[mask],
            timestamps=None if self.timestamps is None else self.timestamps[mask],
            user_vocab=self.user_vocab,
            item_vocab=self.item_vocab,
            source=self.source,
        )

    def positives_per_user(self) -> np.ndarray:
        """int64 count of rows of each user, shape ``(num_users,)``."""
        return np.bincount(self.users, minlength=self.num_users)

    def item_counts(self) -> np.ndarray:
        """int64 count of rows of each item, shape ``(num_items,)`` (the popularity)."""
        return np.bincount(self.items, minlength=self.num_items)
