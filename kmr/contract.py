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

# Inputs. Raw-id graphs (the default): the user's raw ids, INT64 when every raw id is the
# canonical text of an int64, else BYTES (UTF-8). Index graphs: dense INT64 indices.
USER_ID = "user_id"  # wire [B, 1]
ITEM_IDS = "item_ids"  # rerank: [B, N] candidate ids
EXCLUDE_ITEM_IDS = "exclude_item_ids"  # retrieve: [B, M] ids to skip (unknown ids: ignored)
# IVF retrieve only: INT64 [B, 1], lists each row probes; <= 0: the exported default,
# above the version's list count: every list (exact).
NPROBE = "nprobe"
# int8 retrieve only: INT64 [B, 1], candidates re-scored in float32 = k * rescore; <= 0:
# the exported default; clamped to the version's max_rescore (export_manifest.json).
RESCORE = "rescore"

# Outputs.
TOP_ITEM_IDS = "top_item_ids"  # [B, k] raw ids (index graphs: indices); PAD_* in empty slots
TOP_POSITIONS = "top_positions"  # rerank only: INT64 [B, k] position in the candidate list; -1 pad
TOP_SCORES = "top_scores"  # FP32 [B, k]; EMPTY_SCORE in empty slots (finite: valid JSON)
NUM_RESULTS = "num_results"  # INT64 [B, 1]: how many leading slots of the row hold an item

INPUTS = {
    GRAPH_RERANK: (USER_ID, ITEM_IDS),
    GRAPH_RETRIEVE: (USER_ID, EXCLUDE_ITEM_IDS),
}
OUTPUTS = {
    GRAPH_RERANK: (TOP_ITEM_IDS, TOP_POSITIONS, TOP_SCORES, NUM_RESULTS),
    GRAPH_RETRIEVE: (TOP_ITEM_IDS, TOP_SCORES, NUM_RESULTS),
}
OPTIONAL_INPUTS = {GRAPH_RERANK: (), GRAPH_RETRIEVE: (EXCLUDE_ITEM_IDS,)}

# Retrieval indexes of a retrieve model (config parameter PARAM_INDEX). "exact" scores
# every item; "ivf" scores the items of the `NPROBE` lists whose centroids score best;
# "int8" scores every item in int8 and re-scores the best k * `RESCORE` in float32.
INDEX_EXACT = "exact"
INDEX_IVF = "ivf"
INDEX_INT8 = "int8"
INDEXES = (INDEX_EXACT, INDEX_IVF, INDEX_INT8)
# The per-request setting input of each index.
INDEX_SETTINGS = {INDEX_IVF: NPROBE, INDEX_INT8: RESCORE}


def inputs_of(kind: str, index: str = INDEX_EXACT) -> tuple[str, ...]:
    """The served graph's inputs in order: `INPUTS` plus the index's setting, if any.

    Example:
        >>> inputs_of(GRAPH_RETRIEVE, INDEX_IVF)
        ('user_id', 'exclude_item_ids', 'nprobe')
    """
    setting = INDEX_SETTINGS.get(index)
    return INPUTS[kind] + ((setting,) if setting else ())


# The value a served graph puts in an id slot that holds no valid item: padding when
# N < k, a candidate that was out of range, or every slot of an out-of-range user.
INVALID_ID = -1

# Id kinds of a served model (config parameter PARAM_ID_KIND).
IDS_INT = "int"  # raw ids, INT64 on the wire
IDS_STR = "str"  # raw ids, BYTES (UTF-8) on the wire
IDS_INDEX = "index"  # dense indices, INT64 (the caller maps ids itself)
ID_KINDS = (IDS_INT, IDS_STR, IDS_INDEX)
# Reserved raw ids: the id of an empty slot, and what to pad ragged id lists with. They
# can never be real ids (export refuses a vocabulary holding them); any unknown id in a
# candidate or exclusion list is harmless too (never recommended / ignored).
PAD_INT = -(2**63)
PAD_STR = "\uffff"  # a Unicode noncharacter (reserved for internal use)
# The score of an empty slot: the lowest finite float32, so JSON answers stay valid
# (Triton writes -inf as -Infinity, which strict JSON parsers refuse). The project client
# turns it back into -inf.
EMPTY_SCORE = -3.4028234663852886e38

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
PARAM_ID_KIND = "id_kind"
PARAM_INDEX = "index"  # retrieve models: one of INDEXES; absent means INDEX_EXACT

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
