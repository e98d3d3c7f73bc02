"""Publishing model repository versions to object storage (S3 and S3-compatible stores).

Object stores have no atomic rename, so a version is published in a fixed order: every
file of ``<prefix>/<model>/<version>/`` is uploaded and verified (size and checksum),
then ``<prefix>/<model>/config.pbtxt`` (if changed), and last a small marker object
``<version>/.kmr-complete.json`` listing the files and their sha256. A version without
its marker (an upload killed midway) is *incomplete*: `find_complete_versions` never
lists it and `pinned_load_config` refuses it.

Replicas must run tritonserver with ``--model-control-mode=explicit`` on object storage
(never ``poll``: a poll could see a half-uploaded version) and load only complete
versions, pinned with a ``version_policy``: the store's ``config.pbtxt`` pins the fleet's
version, which a (re)started replica loads (`export.storage.serving`; a rollout moves
it), and a rollout's load requests pin theirs (`export.storage.rollout`).

Endpoint and credentials come from the standard environment, as boto3 reads it:
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION`` (or ``~/.aws/credentials``).

Example:
    >>> parse_repository_url("s3://models/prod").key("recommender", "3", MARKER_FILE)
    'prod/recommender/3/.kmr-complete.json'

Publishing needs a store::

    publish_version("model_repository", "recommender_rerank", 1, "s3://models/prod")
    find_complete_versions("s3://models/prod", "recommender_rerank")  # [1]
"""

from export.storage.download import download_version
from export.storage.location import MARKER_FILE, S3Location, parse_repository_url
from export.storage.publish import PublishResult, publish_version
from export.storage.rollout import pinned_load_config
from export.storage.route import export_to_object_store
from export.storage.serving import pin_serving_version, serving_version
from export.storage.versions import find_complete_versions, read_marker, remote_versions

__all__ = [
    "MARKER_FILE",
    "PublishResult",
    "S3Location",
    "download_version",
    "export_to_object_store",
    "find_complete_versions",
    "parse_repository_url",
    "pin_serving_version",
    "pinned_load_config",
    "publish_version",
    "read_marker",
    "remote_versions",
    "serving_version",
]
