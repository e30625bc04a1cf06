"""Attachment skill of the hardened example agent: file URIs are validated before use."""

from pathlib import Path

from asap.models.parts import FilePart
from asap.observability import get_logger, sanitize_for_logging

ATTACHMENTS = Path("/srv/orders/attachments")
logger = get_logger(__name__)


def read_attachment(payload: dict) -> bytes:
    logger.info("orders.attachment.requested", payload=sanitize_for_logging(payload))
    part = FilePart(type="file", uri=payload["uri"], mime_type="application/pdf")  # rejects ".." and file://
    target = (ATTACHMENTS / part.uri.removeprefix("asap://attachments/")).resolve()
    if not target.is_relative_to(ATTACHMENTS):
        raise ValueError("attachment outside the attachments directory")
    return target.read_bytes()
