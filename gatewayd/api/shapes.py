"""JSON shapes of the API's objects. Transfers follow Waarp Gateway's REST shape
(camelCase, see shared reference): times are RFC 3339 with the offset of the gateway's
time zone, and each transfer carries the SHA-256 of its data once known.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from gatewayd.config.schema import RuleConfig
from gatewayd.model import Status, Transfer
from gatewayd.store.base import ApiToken


def rfc3339(value: datetime | None, tz: tzinfo) -> str | None:
    return None if value is None else value.astimezone(tz).isoformat()


def transfer_json(t: Transfer, tz: tzinfo) -> dict[str, Any]:
    """A transfer row as the API shows it."""
    available = t.status == Status.AVAILABLE
    return {
        "id": t.id,
        "remoteID": t.remote_id,
        "followID": t.follow_id,
        "parentID": t.parent_id,
        "rule": t.rule,
        "isServer": t.is_server,
        "isSend": t.is_send,
        "requester": t.requester,
        "requested": t.requested,
        "protocol": t.protocol,
        "account": t.account,
        "partner": t.partner,
        "srcFilename": t.src_filename,
        "destFilename": t.dest_filename,
        "localFilepath": t.local_filepath,
        "remoteFilepath": t.remote_filepath,
        "filesize": t.filesize,
        "start": rfc3339(t.start, tz),
        "stop": rfc3339(t.stop, tz),
        "status": t.status.value,
        "step": t.step.value,
        "progress": t.progress,
        "taskNumber": t.task_number,
        "errorCode": t.error_code.value,
        "errorMsg": t.error_msg,
        "transferInfo": t.transfer_info,
        "remainingAttempts": t.remaining_attempts,
        # A pre-registered transfer's `next_attempt` is its expiry.
        "nextAttempt": None if available else rfc3339(t.next_attempt, tz),
        "expires": rfc3339(t.next_attempt, tz) if available else None,
        "nextRetryDelay": t.next_retry_delay,
        "retryIncrementFactor": t.retry_increment_factor,
        "sha256": t.sha256,
        # Several nodes: the node that runs it (or last ran it), and the one that took
        # it over when that node died.
        "node": t.owner,
        "takenOverBy": t.taken_over_by,
        "takenOverAt": rfc3339(t.taken_over_at, tz),
    }


def rule_json(rule: RuleConfig) -> dict[str, Any]:
    """A rule with the field names of its YAML file."""
    return rule.model_dump(mode="json", exclude={"source"})


def token_json(token: ApiToken, tz: tzinfo) -> dict[str, Any]:
    """A token's record; never the token itself (only its creation answer has it)."""
    return {
        "id": token.id,
        "user": token.user,
        "permissions": dict(token.permissions),
        "manageTokens": token.manage_tokens,
        "comment": token.comment,
        "created": rfc3339(token.created, tz),
        "expires": rfc3339(token.expires, tz),
        "revoked": rfc3339(token.revoked, tz),
    }
