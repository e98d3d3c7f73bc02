"""Names and facts shared by export, the Triton config and the client.

This module is pure Python (no Keras, no TensorFlow, no numpy) so the thin client can
import it. Every served graph uses these tensor names; every exported model records the
``PARAM_*`` facts in its ``config.pbtxt`` ``parameters`` so a client can discover them.

Example:
    >>> from kmr import contract
    >>> contract.USER_ID, contract.GRAPH_KINDS
    ('user_id', ('rerank', 'retrieve'))
"""

from __future__ import annotations

# Graph kinds.
GRAPH_RERANK = "rerank"
GRAPH_RETRIEVE = "retrieve"
GRAPH_KINDS = (GRAPH_RERANK, GRAPH_RETRIEVE)

# Inputs (INT64 on the wire).
USER_ID = "user_id"  # [B]
ITEM_IDS = "item_ids"  # rerank: [B, N] candidate item indices
EXCLUDE_ITEM_IDS = "exclude_item_ids"  # retrieve: [B, M] item indices to skip, -1 padded

# Outputs.
TOP_ITEM_IDS = "top_item_ids"  # INT64 [B, k]; -1 where there is no valid item
TOP_POSITIONS = "top_positions"  # rerank only: INT64 [B, k] position in the candidate list; -1 pad
TOP_SCORES = "top_scores"  # FP32 [B, k]; -inf where there is no valid item

INPUTS = {
    GRAPH_RERANK: (USER_ID, ITEM_IDS),
    GRAPH_RETRIEVE: (USER_ID, EXCLUDE_ITEM_IDS),
}
OUTPUTS = {
    GRAPH_RERANK: (TOP_ITEM_IDS, TOP_POSITIONS, TOP_SCORES),
    GRAPH_RETRIEVE: (TOP_ITEM_IDS, TOP_SCORES),
}
OPTIONAL_INPUTS = {GRAPH_RERANK: (), GRAPH_RETRIEVE: (EXCLUDE_ITEM_IDS,)}

# The value a served graph puts in an id slot that holds no valid item: padding when
# N < k, a candidate that was out of range, or every slot of an out-of-range user.
INVALID_ID = -1

# Keys of config.pbtxt `parameters` (string values, as Triton stores them).
PARAM_GRAPH_KIND = "graph_kind"
PARAM_NUM_USERS = "num_users"
PARAM_NUM_ITEMS = "num_items"
PARAM_EMBEDDING_DIM = "embedding_dim"
PARAM_K = "k"
PARAM_MAX_CANDIDATES = "max_candidates"
PARAM_MAX_EXCLUDE = "max_exclude"
PARAM_USER_VOCAB = "user_vocabulary"
PARAM_ITEM_VOCAB = "item_vocabulary"

# File names inside a trained-artifacts folder and a model repository.
TRITON_CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.keras"
ONNX_FILE = "model.onnx"
ONNX_WEIGHTS_FILE = "model.onnx.data"
USER_VOCAB_FILE = "user_vocabulary.json"
ITEM_VOCAB_FILE = "item_vocabulary.json"
METRICS_FILE = "metrics.json"

# Request-size bounds a served model enforces (documented in the README).
DEFAULT_MAX_CANDIDATES = 10_000
DEFAULT_MAX_EXCLUDE = 10_000
