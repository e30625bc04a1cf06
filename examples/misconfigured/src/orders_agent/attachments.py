"""Attachment skill of the misconfigured example agent (deliberately unsafe)."""

import logging
import os

ATTACHMENTS = "/srv/orders/attachments"
logger = logging.getLogger(__name__)


def read_attachment(payload: dict) -> bytes:
    logger.info("attachment requested: %s", payload)  # raw payload: secrets and PII reach the log
    with open(os.path.join(ATTACHMENTS, payload["path"]), "rb") as fh:  # "../../etc/passwd" walks out
        return fh.read()
