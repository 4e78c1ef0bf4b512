"""Python client for danet-serve (REST or gRPC, synchronous).

    from client import DanetClient

    with DanetClient("http://localhost:8000") as c:          # or DanetClient(grpc="localhost:8001")
        seg = c.segment("street.jpg", format="index")
        labels = seg.labels()                                 # [H, W] class ids

Every failure raises ``DanetClientError``. Importing this package never imports torch.
"""

from client._client import DanetClient
from client._errors import DanetClientError
from client._types import FORMATS, ClassStat, ModelSummary, Segmentation

__all__ = ["FORMATS", "ClassStat", "DanetClient", "DanetClientError", "ModelSummary", "Segmentation"]
